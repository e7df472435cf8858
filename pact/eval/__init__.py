"""Evaluation with lmms-eval: the lmms-eval model ``pact`` (``pact eval`` is its command).

lmms-eval is optional (``pip install "pact-vlm[eval]"``) and slow to import, so nothing here
imports it at module level: :mod:`pact.eval.lmms` (the wrapper class) does, and is only
imported when an evaluation runs; :mod:`pact.eval.runner` is what the wrapper does with a
model, free of lmms-eval.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = 'lmms-eval is not installed; install it with: pip install "pact-vlm[eval]"'
WRAPPER_PATH = "pact.eval.lmms.PactLMM"
CHAT_WRAPPER_PATH = "pact.eval.chat.PactChatLMM"


def lmms_eval_available() -> bool:
    """Whether lmms-eval can be imported (checked without importing it)."""
    return importlib.util.find_spec("lmms_eval") is not None


def require_lmms_eval() -> None:
    """Raise ``ImportError`` with the install command when lmms-eval is missing."""
    if not lmms_eval_available():
        raise ImportError(INSTALL_HINT)


def positive_int(value, name: str) -> int:
    """``value`` as an integer of at least 1; the error names the argument ``name``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return number


def lmms_manifest():
    """lmms-eval's registration of the ``pact`` model (the ``lmms_eval.models`` entry point).

    lmms-eval calls it while building its model registry, so ``--model pact`` works from
    its own command line once pact is installed.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="pact", simple_class_path=WRAPPER_PATH, chat_class_path=CHAT_WRAPPER_PATH
    )
