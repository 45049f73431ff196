"""Light imports: the package, the command line, config validation and every module a rule file
imports (each DAG parse, dry run and lint), and the light workflow steps load neither torch nor ANTs,
which take seconds to import in every job that does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ants")

#: Rules whose jobs read tables and small files only.
LIGHT_RULES = ("subject_report", "cohort", "cohort_report", "dataset_description", "mars_atlas")

_IMPORT = re.compile(r"^from (cmbflow[\w.]*) import", re.MULTILINE)


def _rule_scripts() -> dict[str, Path]:
    scripts = {}
    for smk in (ROOT / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.MULTILINE | re.DOTALL):
            script = re.search(r'script:\s*"\.\./(workflow_scripts/\w+\.py)"', body)
            if script:
                scripts[rule] = ROOT / script.group(1)
    return scripts


def _modules() -> list[str]:
    scripts = _rule_scripts()
    files = [scripts[rule] for rule in LIGHT_RULES] + sorted((ROOT / "rules").glob("*.smk"))
    found = {module for path in files for module in _IMPORT.findall(path.read_text())}
    return sorted(found | {"cmbflow", "cmbflow.config", "cmbflow.bids_app", "cmbflow.cli"})


def test_every_light_rule_runs_a_script():
    assert set(LIGHT_RULES) <= set(_rule_scripts())


@pytest.mark.parametrize("module", _modules())
def test_module_imports_neither_torch_nor_ants(module):
    code = f"import sys, {module}; print(*[m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"importing {module} loads {result.stdout.strip()}"


def test_the_subject_report_draws_without_matplotlib():
    """Its figures are grey cuts with outlines (Pillow); matplotlib is for the cohort plots only."""
    imports = " ".join(f"import {module};" for module in _IMPORT.findall(_rule_scripts()["subject_report"].read_text()))
    result = subprocess.run([sys.executable, "-c", f"import sys; {imports} print('matplotlib' in sys.modules)"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
