"""Benchmarks: results are committed as JSON under bench/results and summarized in bench/RESULTS.md."""
