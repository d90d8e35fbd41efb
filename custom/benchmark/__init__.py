"""The noise-robustness benchmark harness behind ``scripts/benchmark.py``."""
