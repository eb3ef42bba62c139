"""LLM-as-judge scorers through litellm."""
