"""Statistical scorers: drift tests and a per-step anomaly scorer against a fitted baseline.

Pure statistics (numpy, scipy, scikit-learn); the store side (fitting from history, versions,
drift reports) is ``evalsvc.pipeline.baselines`` and ``evalsvc.pipeline.drift``::

    >>> from scorers.stats import ProfileSpec
    >>> ProfileSpec(numeric=["latency_ms"], categorical=["output.label"]).text
    []
"""

from .anomaly import AnomalyModel
from .profile import FeatureDrift, Profile, ProfileSpec, fit_profile
from .scorer import NeedsBaseline, StepAnomaly
from .text import TextModel
from .twosample import DriftTest

__all__ = [
    "AnomalyModel",
    "DriftTest",
    "FeatureDrift",
    "NeedsBaseline",
    "Profile",
    "ProfileSpec",
    "StepAnomaly",
    "TextModel",
    "fit_profile",
]
