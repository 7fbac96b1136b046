"""The documentation site builds strictly, reads offline, and leaves nothing public unsaid.

`mkdocs build --strict` fails on any warning: a broken link or anchor, a page left out
of the navigation, a reference that mkdocstrings cannot resolve. The other checks keep
the reference in step with the code: every public name, environment variable and
metric is documented.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import errands
from tests.examples import ROOT

DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_http_api_from_the_openapi_document(site: Path) -> None:
    http = (site / "reference" / "http.html").read_text()
    assert "POST /jobs/batch" in http and 'id="schema-jobrequest"' in http
    assert (site / "openapi.json").read_text().startswith("{")
    cli = (site / "reference" / "cli.html").read_text()
    assert "errands run" in cli and "--concurrency" in cli


@pytest.mark.slow
def test_the_site_loads_no_script_stylesheet_or_font_from_elsewhere(site: Path) -> None:
    external = re.compile(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//', re.IGNORECASE)
    offenders = [
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if external.search(page.read_text())
    ]
    assert not offenders, offenders


def test_every_public_name_has_its_reference_entry() -> None:
    python = (DOCS / "reference" / "python.md").read_text()
    missing = [name for name in errands.__all__ if f"::: errands.{name}\n" not in python]
    assert not missing, f"add ::: errands.NAME to docs/reference/python.md for {missing}"
    testing = (DOCS / "reference" / "testing.md").read_text()
    from errands import testing as helpers  # noqa: PLC0415

    assert not [n for n in helpers.__all__ if f"::: errands.testing.{n}\n" not in testing]


def test_every_environment_variable_is_documented() -> None:
    code = "".join(path.read_text() for path in (ROOT / "errands").glob("*.py"))
    variables = set(re.findall(r'"(ERRANDS_[A-Z_]+)"', code))
    documented = (DOCS / "reference" / "configuration.md").read_text()
    assert variables and not [v for v in sorted(variables) if f"`{v}`" not in documented]


def test_every_metric_is_documented() -> None:
    code = (ROOT / "errands" / "metrics.py").read_text()
    metrics = set(re.findall(r'"(errands_[a-z_]+)"', code))
    documented = (DOCS / "reference" / "metrics.md").read_text()
    assert metrics and not [m for m in sorted(metrics) if f"`{m}" not in documented]
