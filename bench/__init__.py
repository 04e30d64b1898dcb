"""The benchmark suite (pytest-benchmark): `make bench`, `make gpu-check`. See bench/harness.py."""
