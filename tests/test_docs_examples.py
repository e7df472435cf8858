"""Every Python example in the README and docs runs (those needing real weights excepted).

A page's blocks run in order in one namespace, like a script: a tutorial's later blocks
build on its earlier ones. Functions named ``test_*`` that a block defines (a tutorial's
example test file) are called too, so the example tests are exercised, not just defined.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest

import pact

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Examples that load a real checkpoint cannot run offline; they are marked by this call.
NEEDS_WEIGHTS = "from_pretrained"
# ```python, optionally with attributes (title="..."), possibly indented (admonitions, tabs).
FENCE = re.compile(r"^([ \t]*)```python[^\n]*\n(.*?)^\1```", flags=re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    return [
        (f"{name}#{i}", textwrap.dedent(match.group(2)))
        for i, match in enumerate(FENCE.finditer(text))
    ]


PAGES = {
    path.relative_to(ROOT).as_posix(): blocks
    for path in DOCUMENTS
    if (blocks := python_blocks(path))
}


def run_block(name: str, code: str, namespace: dict) -> None:
    """Execute one block, then every zero-argument ``test_*`` function it defined."""
    before = set(namespace)
    exec(compile(code, name, "exec"), namespace)
    for key in sorted(set(namespace) - before):
        function = namespace[key]
        if key.startswith("test_") and inspect.isfunction(function):
            if inspect.signature(function).parameters:
                raise AssertionError(f"{name}: example test {key} must take no fixtures")
            function()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_examples_run(page: str, single_thread) -> None:
    registered = {kind: set(registry.names()) for kind, registry in pact.REGISTRIES.items()}
    namespace = {"__name__": f"example_{page}"}
    runnable = [(name, code) for name, code in PAGES[page] if NEEDS_WEIGHTS not in code]
    try:
        for name, code in runnable:
            run_block(name, code, namespace)
    finally:  # examples may register components: leave the registries as they were
        for kind, registry in pact.REGISTRIES.items():
            for extra in set(registry.names()) - registered[kind]:
                registry.unregister(extra)
    if not runnable:
        pytest.skip("every example on this page needs a real checkpoint")


def test_examples_were_found() -> None:
    blocks = [block for blocks in PAGES.values() for block in blocks]
    assert len(blocks) >= 12
    assert {"docs/ablation.md", "docs/plugins.md", "docs/models.md"} <= set(PAGES)
