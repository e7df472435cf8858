"""MkDocs hook: adds the generated configuration reference to every build, and the table
of supported model families (``pact.hooks.families.VLM_FAMILIES``) to the models page.

The page is produced by ``python -m pact.reference`` in a fresh interpreter, so that
``mkdocs serve`` picks up edits to pact's configs without a restart (a module imported
into the MkDocs process would stay at its first version). Nothing is written to ``docs/``:
the page exists only in the build, and so can never be stale or edited by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

REFERENCE_PAGE = "config-reference.md"
# pact's docstrings use Sphinx roles (:class:`X`); markdown renders the name as code and
# leaves the role in front of it, which only reads as noise.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?=<code>)")


FAMILIES_MARKER = "<!-- families table: generated from pact/hooks/families.py -->"


def generate_reference(root: Path, module: str = "pact.reference") -> str:
    """The markdown that ``python -m module`` prints (by default the reference page), from
    the pact that ``root`` (the folder of mkdocs.yml) imports: the checkout itself comes
    first on ``python -m``'s path."""
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise PluginError(f"python -m {module} failed:\n{result.stderr}")
    return result.stdout


def on_files(files: Files, config) -> Files:
    """Register the generated page before the nav is resolved against the files."""
    root = Path(config.config_file_path).parent
    files.append(File.generated(config, REFERENCE_PAGE, content=generate_reference(root)))
    return files


def on_page_content(html: str, page, config, files) -> str:
    """Drop Sphinx role prefixes from the rendered API docstrings."""
    return SPHINX_ROLE.sub("", html)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Put the family table in place of its marker on the models page."""
    if FAMILIES_MARKER not in markdown:
        return markdown
    root = Path(config.config_file_path).parent
    table = generate_reference(root, "pact.hooks.families")
    return markdown.replace(FAMILIES_MARKER, table)
