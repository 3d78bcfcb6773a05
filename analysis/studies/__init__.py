"""The studies ``linflow reproduce NAME`` runs: one module per paper, found by its file name.

A study module defines ``TITLE`` (one line), ``specs_for(quick) -> {name: Spec}`` (the sweeps, each
stored as ``NAME.zarr`` in the output folder), ``write(out, datasets) -> Path`` (figures and a Markdown
report from the finished stores) and ``checks(datasets) -> [(claim, holds)]`` (what its results must
show). The command line runs the sweeps (sweep.runner); a study only reads their results. The next
study is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def write_markdown(out: Path, md: list[str], checks: list[tuple[str, bool]]) -> Path:
    """``out/reproduce.md``: a study's report lines ``md``, then its checks, each ✓ or ✗ FAILED."""
    md = [*md, "## Checks", "", *(f"- {'✓' if holds else '✗ FAILED:'} {claim}" for claim, holds in checks), ""]
    path = out / "reproduce.md"
    path.write_text("\n".join(md))
    return path


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str):
    """The study module ``name``; KeyError when there is none."""
    if name not in names():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")
