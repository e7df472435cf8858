"""Measurements: speed, fidelity and clusterers on the built-in models, the quality
benchmark (:mod:`pact.bench.quality`) and the GPU checks (:mod:`pact.bench.gpu`).

A benchmark takes the models of :mod:`pact.models` and returns a JSON-ready report (and a
plot on request); the command line (:mod:`pact.cli.bench`) prints it.
"""
