"""Benchmark and test helpers: tiny random-weight vision-language models and hand-built inputs."""
