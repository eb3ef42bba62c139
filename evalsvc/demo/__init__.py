"""The bundled demo: a simulated invoice agent, its evaluators, and the end-to-end run."""
