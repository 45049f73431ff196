"""Where the Snakemake workflow (Snakefile, rules/, config/, profiles/, ...) lives."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def workflow_dir() -> Path:
    """The folder holding the Snakefile: ``cmbflow/workflow`` in an installed wheel (copied there
    at build time, pyproject.toml), the repository root in a source checkout or editable install."""
    packaged = _PACKAGE / "workflow"
    return packaged if (packaged / "Snakefile").is_file() else _PACKAGE.parents[1]
