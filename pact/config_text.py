"""Reading config text and editing config mappings by ``path=value`` (before validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pact.errors import ConfigError


def is_file(path: Path) -> bool:
    """``path.is_file()``, False where the OS refuses the name (e.g. too long to be a path)."""
    try:
        return path.is_file()
    except OSError:
        return False


def parse_text(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML or JSON: {error}") from None
    if data is None:
        raise ConfigError(
            f"{origin} is empty; write 'stages: []' (or use the preset 'none') for the "
            "unchanged model"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping; got {type(data).__name__}")
    return data


def set_path(node: Any, keys: list[str], value: Any, override: str) -> None:
    """Set ``value`` at ``keys`` in ``node`` (``*`` and indices in lists), for ``override``."""
    key, rest = keys[0], keys[1:]
    if isinstance(node, list):
        for index in _list_indices(node, key, override):
            if rest:
                set_path(node[index], rest, value, override)
            else:
                node[index] = value
        return
    if not isinstance(node, dict):
        raise ConfigError(f"override {override!r}: cannot descend into {node!r} at {key!r}")
    if not rest:
        if key == "name" and node.get("name") not in (None, value):
            node.clear()  # a different component: drop the old one's settings
        node[key] = value
        return
    child = node.get(key)
    if isinstance(child, str):  # component shorthand `clusterer: dbdpc`
        child = node[key] = {"name": child}
    if child is None:
        child = node[key] = {}
    set_path(child, rest, value, override)


def _list_indices(node: list, key: str, override: str) -> list[int]:
    if key == "*":
        if not node:
            raise ConfigError(f"override {override!r}: the config has no stage to apply it to")
        return list(range(len(node)))
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(
            f"override {override!r}: {key!r} is not an index of a list of {len(node)} item(s)"
        )
    return [int(key)]
