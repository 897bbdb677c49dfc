"""The benchmark library: pools, replay, cells and timing shared by the scripts of `benchmarks`."""
