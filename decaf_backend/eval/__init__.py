"""Benchmark evaluation: official J&F metrics, dataset readers, the resumable runner and its CLI."""
