"""Statistical scorers: drift and anomaly against a fitted baseline."""
