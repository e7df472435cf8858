"""The only part of pact that knows transformers: attaching reduction to a loaded model."""

from pact.hooks.handle import PactHandle, attach, attached
from pact.hooks.stats import HandleStats

__all__ = ["HandleStats", "PactHandle", "attach", "attached"]
