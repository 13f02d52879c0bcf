"""Benchmarks that print JSON: the project's figure, a baseline measured in the same run, the ratio."""
