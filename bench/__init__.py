"""taskman benchmarks: ``python -m bench`` (see bench/README.md). Not tests: nothing here asserts timings."""
