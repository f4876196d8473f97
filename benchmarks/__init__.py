"""Benchmarks: repeatable measurements of the training core (quality, speed)."""
