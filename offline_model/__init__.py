"""Deterministic, OpenAI-compatible stand-in LLM used as the upstream of tests and benchmarks."""
