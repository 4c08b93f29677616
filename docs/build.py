"""Build the documentation site: the API reference from the docstrings, beside the guides.

    python docs/build.py                 # static HTML in build/docs (make docs)
    python docs/build.py --out DIR

pdoc renders every public module of discdiff (a dotted name with no part starting with ``_``)
and five pages, each a module under ``docs/pages`` whose docstring includes a markdown file:
the README (Guide), ``docs/concepts.md`` (Concepts), ``examples/README.md`` (Training example),
``docs/pages/testing.md`` (Test your own component) and ``docs/replication.md`` (Replication
report). Links between those markdown files are
rewritten to the pages' HTML.

The build fails (exit status 1, each problem named) on any warning pdoc raises (a missing
include, a module that fails to import, a docstring it cannot process), on a broken reference
(a code span that names ``discdiff.something`` pdoc cannot resolve: it links every one it can)
and on a local link to a file the site does not have.
"""

from __future__ import annotations

import argparse
import html
import pkgutil
import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

PAGES = {  # page module -> (title, the markdown file it includes, a one-line summary)
    "guide": ("Guide", "README.md",
              "What discdiff is, a training step with your own model, sampling and distillation, "
              "what it gets right, the layout."),
    "concepts": ("Concepts", "docs/concepts.md",
                 "The mathematics: forward processes, the duality T, the NELBOs, the curriculum, "
                 "the samplers with their tails and Ψ, DCD and SDTT, metrics, block diffusion, "
                 "the two meanings of a model's logits."),
    "training": ("Training example", "examples/README.md",
                 "The example: data, configs, the training loop on CPU or many GPUs, unpacked "
                 "data, your own backbone, evaluation, released checkpoints."),
    "testing": ("Test your own component", "docs/pages/testing.md",
                "discdiff.testing: exact laws of toys, contract checks and hypothesis strategies "
                "for your own samplers, schedules and denoisers."),
    "replication": ("Replication report", "docs/replication.md",
                    "The paper's claims at CPU scale, each beside the paper's figure."),
}  # fmt: skip

TAGLINE = ("Pluggable components for discrete diffusion language models, built around Duo "
           "(\"The Diffusion Duality\", Sahoo et al., ICML 2025): uniform-state diffusion from "
           "Gaussian diffusion through argmax, its curriculum, and Discrete Consistency "
           "Distillation for few-step generation.")  # fmt: skip

_UNRESOLVED = re.compile(r"<code>(discdiff(?:\.\w+)+)(?:\(\))?</code>")
_HREF = re.compile(r'href="([^"]*)"')


def public_modules() -> list[str]:
    """discdiff and every submodule whose dotted name has no part starting with ``_``."""
    import discdiff

    names = {"discdiff"}
    for info in pkgutil.walk_packages(discdiff.__path__, "discdiff."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.add(info.name)
    return sorted(names)


def _rewrite_page_links(out: Path) -> None:
    """Links between the included markdown files point at their pages instead."""
    by_source = {(ROOT / source).resolve(): f"{name}.html" for name, (_, source, _) in
                 PAGES.items()}  # fmt: skip
    for name, (_, source, _) in PAGES.items():
        page = out / f"{name}.html"
        base = (ROOT / source).parent

        def repl(m: re.Match[str], base: Path = base) -> str:
            href = html.unescape(m.group(1))
            target, _, anchor = href.partition("#")
            if not target or "://" in target or target.startswith(("data:", "mailto:")):
                return m.group(0)
            resolved = (base / target).resolve()
            if resolved in by_source:
                new = by_source[resolved] + (f"#{anchor}" if anchor else "")
                return f'href="{html.escape(new)}"'
            return m.group(0)

        page.write_text(_HREF.sub(repl, page.read_text(encoding="utf-8")), encoding="utf-8")


def check_site(out: Path) -> list[str]:
    """Broken references and local links in the built HTML."""
    problems = []
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(out)
        for name in sorted(set(_UNRESOLVED.findall(text))):
            problems.append(f"{where}: unresolved reference `{name}`")
        for href in sorted(set(_HREF.findall(text))):
            target = html.unescape(href).partition("#")[0]
            if (not target or "://" in target or "${" in target
                    or target.startswith(("data:", "mailto:", "javascript:"))):  # fmt: skip
                continue
            if not (page.parent / target).exists():
                problems.append(f"{where}: link to a missing file {target!r}")
    return problems


def build(out: Path) -> list[str]:
    """Render the site into ``out``; return the problems found (empty: a good build)."""
    import pdoc
    import pdoc.render

    import discdiff

    pdoc.render.configure(
        docformat="google", search=True, show_source=True,
        template_directory=DOCS / "templates", footer_text=f"discdiff {discdiff.__version__}",
    )  # fmt: skip
    env = pdoc.render.env
    env.globals["pages"] = {name: title for name, (title, _, _) in PAGES.items()}
    env.globals["page_summaries"] = {name: summary for name, (_, _, summary) in PAGES.items()}
    env.globals["tagline"] = TAGLINE
    pages = [DOCS / "pages" / f"{name}.py" for name in PAGES]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*pages, *public_modules(), output_directory=out)
    problems = [f"pdoc: {w.message}" for w in caught]
    _rewrite_page_links(out)
    return problems + check_site(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "docs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    problems = build(args.out)
    if problems:
        print(f"documentation build failed ({len(problems)} problems):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"documentation in {args.out / 'index.html'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
