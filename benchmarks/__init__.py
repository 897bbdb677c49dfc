"""Benchmarks of matloop: scripts run as `python -m benchmarks.<name>` from the repository root, and their library
(`benchmarks.lib`). Results and commands: BENCHMARKS.md."""
