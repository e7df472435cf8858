"""Checks that need a GPU to say much, and run smaller on a CPU: does the flash kernel stay
(:mod:`~pact.bench.gpu.flash_check`), DBDPC's time and host synchronisations
(:mod:`~pact.bench.gpu.dbdpc_timing`), and the end-to-end section
(:mod:`~pact.bench.gpu.end_to_end`); ``benchmarks/gpu_suite.py`` runs them."""
