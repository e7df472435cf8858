"""Every Python example in the README and docs runs (those needing real weights excepted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pact

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Examples that load a real checkpoint cannot run offline; they are marked by this call.
NEEDS_WEIGHTS = "from_pretrained"


def python_blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return [(f"{path.name}#{i}", block) for i, block in enumerate(blocks)]


EXAMPLES = [example for path in DOCUMENTS for example in python_blocks(path)]


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_example_runs(name: str, code: str) -> None:
    if NEEDS_WEIGHTS in code:
        pytest.skip("needs a real checkpoint")
    registered = {kind: set(registry.names()) for kind, registry in pact.REGISTRIES.items()}
    try:
        exec(compile(code, name, "exec"), {"__name__": f"example_{name}"})
    finally:  # examples may register components: leave the registries as they were
        for kind, registry in pact.REGISTRIES.items():
            for extra in set(registry.names()) - registered[kind]:
                registry.unregister(extra)


def test_examples_were_found() -> None:
    assert len(EXAMPLES) >= 4
