"""The documentation site builds from the docstrings and the guides, and its checks bite.

``docs/build.py`` fails on any pdoc warning, on a code span naming a ``discdiff.*`` object that
does not resolve, and on a local link to a missing file; the build runs here as in CI.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build_module():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_without_warnings_or_broken_references(tmp_path):
    out = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build.py"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    index = (out / "index.html").read_text(encoding="utf-8")
    for page in ("guide", "concepts", "training", "testing", "replication"):
        assert f'href="{page}.html"' in index
        assert (out / f"{page}.html").is_file()
    assert 'href="discdiff/diffusion.html"' in index
    concepts = (out / "concepts.html").read_text(encoding="utf-8")
    assert "The duality" in concepts and 'href="discdiff.html#UniformDiffusion"' in concepts
    guide = (out / "guide.html").read_text(encoding="utf-8")
    assert 'href="training.html"' in guide  # README's link to examples/README.md, rewritten
    diffusion = (out / "discdiff" / "diffusion.html").read_text(encoding="utf-8")
    assert "UniformDiffusion" in diffusion and "to_dict" in diffusion


def test_the_checks_catch_a_broken_reference_and_a_missing_file(tmp_path):
    build = _build_module()
    (tmp_path / "page.html").write_text(
        '<p><code>discdiff.no_such_thing</code> and <code><a href="x.html">discdiff.ok</a>'
        '</code>, <a href="missing.html#a">here</a>, <a href="https://example.org">web</a>, '
        '<a href="#local">local</a></p>'
    )
    problems = build.check_site(tmp_path)
    assert any("discdiff.no_such_thing" in p for p in problems), problems
    assert any("missing.html" in p for p in problems), problems
    assert any("x.html" in p for p in problems)  # a link to a missing file, even if named well
    assert len(problems) == 3, problems
