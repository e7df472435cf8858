"""The official configurations of PACT's paper, as YAML files loadable by name."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import yaml

from pact.errors import UnknownPresetError

_FOLDER = files(__name__)


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _FOLDER.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """The YAML source of a preset (comments included)."""
    if name not in list_presets():
        raise UnknownPresetError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    return (_FOLDER / f"{name}.yaml").read_text(encoding="utf-8")


def preset_dict(name: str) -> dict[str, Any]:
    """A preset as the plain mapping that :class:`pact.PactConfig` validates."""
    return yaml.safe_load(preset_text(name)) or {}


def preset_description(name: str) -> str:
    """The comment at the top of a preset's YAML, without its ``#`` marks."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)
