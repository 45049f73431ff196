"""bids-validator before a participant run: its problems, told per subject, never a crash.

cmbflow checks every input it reads itself (one line per bad file, other subjects go on), so the
validator's findings are advice: a subject with errors is still processed, and the user sees which
subjects the dataset's errors are in before the cluster time is spent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

VALIDATOR = "bids-validator-deno"
_SUBJECT = re.compile(r"^/sub-([A-Za-z0-9]+)/")


def validation_problems(validator: str, bids_dir: Path) -> dict[str, list[str]]:
    """Errors of the validator's JSON report, by subject label ("" for dataset-level ones).

    Warnings are left out: nearly every real dataset has some (missing recommended fields).
    """
    result = subprocess.run([validator, str(bids_dir), "--format", "json"], capture_output=True, text=True)
    try:
        issues = json.loads(result.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError) as err:
        raise RuntimeError(f"bids-validator gave no JSON report (exit {result.returncode}): "
                           f"{result.stderr.strip()[:300]}") from err
    problems: dict[str, list[str]] = defaultdict(list)
    for issue in issues:
        if issue.get("severity") != "error":
            continue
        location = issue.get("location", "")
        match = _SUBJECT.match(location)
        code = issue["code"] + (f" {issue['subCode']}" if issue.get("subCode") else "")
        problems[match[1] if match else ""].append(f"{code} ({location.lstrip('/') or 'dataset'})")
    return dict(problems)


def report_validation(bids_dir: Path, include: list[str], exclude: list[str]) -> None:
    """Print one line per selected subject with validator errors (and the dataset's own), to stderr."""
    validator = _validator()
    if validator is None:
        print(f"cmbflow: {VALIDATOR} not found; BIDS validation skipped (pip install {VALIDATOR}, "
              "or pass --skip-bids-validation)", file=sys.stderr)
        return
    wanted = {label.removeprefix("sub-") for label in include}
    unwanted = {label.removeprefix("sub-") for label in exclude}
    try:
        problems = validation_problems(validator, bids_dir)
    except RuntimeError as err:
        print(f"cmbflow: {err}; BIDS validation skipped", file=sys.stderr)
        return
    shown = {subject: lines for subject, lines in problems.items()
             if subject == "" or ((not wanted or subject in wanted) and subject not in unwanted)}
    for subject, lines in sorted(shown.items()):
        where = f"sub-{subject}" if subject else "dataset"
        print(f"cmbflow: bids-validator: {where}: {len(lines)} error(s): {'; '.join(lines[:3])}"
              + (" ..." if len(lines) > 3 else ""), file=sys.stderr)
    if shown:
        print("cmbflow: going on (each input is checked again when read; --skip-bids-validation skips this)",
              file=sys.stderr)


def _validator() -> str | None:
    # The console script sits beside this interpreter in a venv whose bin/ may not be on PATH.
    beside = Path(sys.executable).parent / VALIDATOR
    return str(beside) if beside.exists() else shutil.which(VALIDATOR)
