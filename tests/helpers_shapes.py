"""What the tests of pact's trained shapes model share."""

SHAPES_TINY_RUN = ["--vision-steps", "4", "--vision-batch", "4", "--vision-check-every", "2",
                   "--steps", "3", "--batch-size", "2", "--questions", "3", "--warmup", "1",
                   "--check-every", "3", "--test-size", "16", "--threads", "1"]  # fmt: skip
"""Arguments of a few-step run of ``python -m pact.models.shapes.train`` (both stages)."""
