"""notifyq benchmarks: `python -m benchmarks.<name>`; each prints one JSON document."""
