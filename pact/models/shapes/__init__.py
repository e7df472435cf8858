"""pact-shapes-vqa: the trained VLM of the quality benchmark and its synthetic task.

Seeded scenes of coloured shapes (:mod:`~pact.models.shapes.scenes`), one-word questions
about them (:mod:`~pact.models.shapes.questions`), a stock ``LlavaForConditionalGeneration``
sized for a CPU with its shipped weights in ``assets/`` (:mod:`~pact.models.shapes.model`),
its scoring (:mod:`~pact.models.shapes.score`), its training
(``python -m pact.models.shapes.train``) and model card
(``python -m pact.models.shapes.card``). ``pact bench quality``
(:mod:`pact.bench.quality`) measures reductions on it.
"""
