"""The VLMs that pact's commands, tests and benchmarks run on.

* :mod:`pact.models.tiny` builds random-weight VLMs of every family that
  :data:`pact.hooks.families.VLM_FAMILIES` marks ``tiny`` (milliseconds on a CPU), and of a
  real decoder's shape; :mod:`pact.models.tiny_inputs` makes their processor-exact batches
  and :mod:`pact.models.tiny_processor` real processors for them.
* :mod:`pact.models.shaped` names the models ``pact bench speed`` takes (``tiny:``,
  ``shape:`` or a checkpoint); :mod:`pact.models.checkpoint` loads a real checkpoint.
* :mod:`pact.models.shapes` is the trained model of the quality benchmark and its synthetic
  task (``python -m pact.models.shapes.train``).

These modules import torch and transformers; nothing here imports :mod:`pact.bench` or
:mod:`pact.cli`.
"""
