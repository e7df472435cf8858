"""The distribution's name and its version, written once (pyproject.toml)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import pact

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_is_pact_vlm_and_imports_as_pact():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == pact.DISTRIBUTION == "pact-vlm"
    # The installed distribution provides the package this test imported.
    files = importlib.metadata.files("pact-vlm") or []
    direct = any(str(path).startswith("pact/") for path in files)
    editable = any(str(path).endswith(".pth") or "editable" in str(path) for path in files)
    assert direct or editable, files


def test_version_is_written_once_and_read_from_the_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert pact.__version__ == importlib.metadata.version("pact-vlm") == project["version"]
    literal = re.compile(r"^__version__\s*=\s*['\"]", re.MULTILINE)
    written = [p for p in (ROOT / "pact").rglob("*.py") if literal.search(p.read_text("utf-8"))]
    assert written == []
