"""The documentation site builds with ``mkdocs build --strict``, offline, and is complete."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pact

ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
PAGES = (
    "index",
    "concepts",
    "method",
    "configuration",
    "config-reference",
    "ablation",
    "plugins",
    "models",
    "api",
    "benchmarks",
)
# Any HTTP request during the build goes to a closed port and fails (strict: an error).
OFFLINE = {
    name: "http://127.0.0.1:9"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy")
}


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is absent
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module's tests."""
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"docs extra not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, **OFFLINE, "NO_MKDOCS_2_WARNING": "1", "no_proxy": "", "NO_PROXY": ""}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return out


def page(site: Path, name: str) -> str:
    path = site / "index.html" if name == "index" else site / name / "index.html"
    return path.read_text(encoding="utf-8")


def test_every_nav_page_is_built(site: Path) -> None:
    for name in PAGES:
        assert "<article" in page(site, name), name


def test_reference_lists_every_registered_component(site: Path) -> None:
    html = page(site, "config-reference")
    for kind, registry in pact.REGISTRIES.items():
        for name in registry.names():
            assert f'id="{kind}-{name}"' in html, (kind, name)
    for name in pact.list_presets():
        assert f'id="preset-{name}"' in html


def test_models_page_shows_the_family_table(site: Path) -> None:
    from pact.hooks.families import VLM_FAMILIES

    html = page(site, "models")
    for family in VLM_FAMILIES.values():
        assert f"<code>{family.model_class}</code>" in html, family.label
    assert "families table" not in html  # the marker was replaced


def test_reference_shows_the_cutoff_field_with_its_range(site: Path) -> None:
    html = page(site, "config-reference")
    assert "<td><code>cutoff</code></td>" in html
    assert "<td>0.0 ≤ cutoff ≤ 2.0</td>" in html
    assert "<td><code>0.21</code></td>" in html


def test_api_reference_documents_the_public_api(site: Path) -> None:
    html = page(site, "api")
    for name in ("attach", "attached", "PactHandle", "PactConfig", "StageConfig", "LayerInputs",
                 "QKSource", "Reduction", "Pipeline", "reduce", "Registry", "register_scorer",
                 "register_clusterer", "register_merger", "Scorer", "ScorerConfig", "Clusterer",
                 "ClustererConfig", "Merger", "MergerConfig"):  # fmt: skip
        assert f'id="pact.{name}"' in html or f'id="pact.hooks.{name}"' in html, name
    assert ":class:<code>" not in html  # Sphinx roles are stripped by docs/hooks.py


def test_concepts_diagram_is_mermaid(site: Path) -> None:
    assert 'class="mermaid"' in page(site, "concepts")


def test_site_needs_no_font_service_and_ships_no_hook(site: Path) -> None:
    for html in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in html.read_text(encoding="utf-8"), html
    assert not list(site.rglob("hooks.py"))
    assert not list(site.rglob("__pycache__"))


def test_every_preset_is_in_the_hand_written_tables() -> None:
    for doc in ("configuration.md", "method.md"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        for name in pact.list_presets():
            assert f"`{name}`" in text, (doc, name)
