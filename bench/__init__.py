"""Benchmarks: each module prints its figures side by side with a baseline measured in the same run."""
