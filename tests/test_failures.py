"""A failed job's one-line error, the cohort table that lists failed subjects, the memory check."""

import json
import os
import re
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.cohort import SUMMARY_COLUMNS, subject_status, write_partial_cohort_tables
from cmbflow.errors import InputError
from cmbflow.memory import PEAK_MB, check_memory, estimate_peak_mb
from cmbflow.stages import prepare_anatomy
from cmbflow.step import run_step


def fake_job(tmp_path, rule, label, image=None, mem_mb=2000):
    """What Snakemake hands a script: enough of it for run_step."""
    log = tmp_path / "logs" / rule / f"{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(threads=1, log=[str(log)], rule=rule, input={} if image is None else {"mag": str(image)},
                                 resources=types.SimpleNamespace(mem_mb=mem_mb))


def fail(problem):
    raise InputError(problem, subject="sub-02", path="/bids/sub-02/anat/x.nii.gz", fix="re-export it")


def test_input_error_ends_the_job_with_one_line_that_becomes_the_subjects_status(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_step(fake_job(tmp_path, "anatomy", "sub-02"), fail, problem="file is empty")
    assert exit_.value.code == 1
    line = "sub-02: /bids/sub-02/anat/x.nii.gz: file is empty; re-export it"
    assert capsys.readouterr().err == f"cmbflow error: {line}\n"
    status = subject_status("sub-02", tmp_path / "missing.json", tmp_path / "logs")
    assert status == f"failed in anatomy: {line}"


def test_a_bug_keeps_its_traceback_in_the_log(tmp_path):
    def bug():
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_step(fake_job(tmp_path, "detect", "sub-03"), bug)
    log = (tmp_path / "logs" / "detect" / "sub-03.log").read_text()
    assert "internal error (a bug; please report it with this log): KeyError" in log and "Traceback" in log
    assert subject_status("sub-03", tmp_path / "none.json", tmp_path / "logs").startswith("failed in detect: internal error")


def test_problem_found_at_start_up_fails_the_first_job(tmp_path):
    with pytest.raises(InputError, match="^sub-04: /x: EchoTime differs; fix it$"):
        prepare_anatomy("/x.nii.gz", None, "last", *(tmp_path / f"{name}" for name in "abcdefgh"), "sub-04",
                        problem="sub-04: /x: EchoTime differs; fix it")


def summary_row(participant):
    return {c: 1 for c in SUMMARY_COLUMNS} | {"participant_id": participant, "session_id": None}


def test_partial_cohort_tables_list_every_subject_with_its_status(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "out" / "logs"
    subjects = {}
    for label in ("sub-01", "sub-02", "sub-03", "sub-04"):
        subjects[label] = (out / label / "qc.json", out / label / "cmb.tsv")
    # sub-01 finished; sub-02 failed in its first job; sub-03 was killed in one; sub-04 never ran.
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "qc.json").write_text(json.dumps(summary_row("sub-01")))
    (out / "sub-01" / "cmb.tsv").write_text("x\ty\tz\n1.0\t2.0\t3.0\n")
    for label, text in (("sub-02", "2026-01-01 10:00:00,000 ERROR root: sub-02: /b/x.nii.gz: file is empty; re-copy it\n"),
                        ("sub-03", "2026-01-01 10:00:00,000 INFO cmbflow.anat: N4\n")):
        (logs / "anatomy").mkdir(parents=True, exist_ok=True)
        (logs / "anatomy" / f"{label}.log").write_text(text)

    missing = write_partial_cohort_tables(subjects, logs, out / "summary.csv", out / "calls.csv")
    assert missing == 3
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS + ["status"]
    assert list(summary.participant_id) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    status = dict(zip(summary.participant_id, summary.status))
    assert status["sub-01"] == "ok" and summary.n_cmb.tolist()[0] == 1 and summary.n_cmb[1:].isna().all()
    assert status["sub-02"] == "failed in anatomy: sub-02: /b/x.nii.gz: file is empty; re-copy it"
    assert status["sub-03"].startswith("not finished: anatomy logged no error (still to run, or killed")
    assert status["sub-04"] == "not finished: no job of this subject has run"
    assert pd.read_csv(out / "calls.csv").participant_id.tolist() == ["sub-01"]


def test_an_error_older_than_the_summary_is_history(tmp_path):
    log = tmp_path / "logs" / "phase_preproc" / "sub-01.log"
    log.parent.mkdir(parents=True)
    log.write_text("t t ERROR root: sub-01: old problem\n")
    summary = tmp_path / "qc.json"
    summary.write_text("{}")
    os.utime(log, (1, 1))
    assert subject_status("sub-01", summary, tmp_path / "logs") == "ok"


def header_only(path, shape):
    """A NIfTI file with this shape in its header and no voxels: enough for a check that must not load them."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([0.5, 0.5, 0.5, 1]), code=1)
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


def test_too_large_for_the_rules_memory_stops_before_loading(tmp_path):
    image = header_only(tmp_path / "sub-05_part-mag_T2starw.nii", (512, 512, 300))
    need = estimate_peak_mb("phase_preproc", 512 * 512 * 300)
    assert need > 2000
    with pytest.raises(InputError) as err:
        check_memory("phase_preproc", image, 2000, label="sub-05")
    text = str(err.value)
    assert text.startswith(f"sub-05: {image}: 78.6 million voxels (512x512x300) need about {need} MB in phase_preproc, "
                           "more than its mem_mb of 2000 MB; give the rule more memory (snakemake --set-resources "
                           "phase_preproc:mem_mb=")
    check_memory("phase_preproc", image, need, label="sub-05")  # enough memory: passes


def test_every_rule_fits_its_memory_on_a_typical_scan():
    """A 0.9x0.9x1.8 mm whole-head scan (200x244x72) runs within each rule's mem_mb (rules/*.smk)."""
    declared = {}
    for smk in (Path(__file__).parents[1] / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), re.M):
            mem = re.search(r"mem_mb=(\d+)", body)
            if mem:
                declared[rule] = int(mem.group(1))
    for rule in PEAK_MB:
        assert estimate_peak_mb(rule, 200 * 244 * 72) <= declared[rule], rule


def test_show_prints_the_partial_table_when_subjects_failed(tmp_path, capsys):
    from cmbflow.cli import run_show

    group = tmp_path / "group"
    group.mkdir()
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "n_cmb": [2, None], "n_lobar": [2, None],
                  "status": ["ok", "failed in anatomy: sub-02: x: file is empty; re-copy it"]}).to_csv(
        group / "cohort_summary_partial.csv", index=False)
    run_show([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "cohort_summary_partial.csv" in printed and "failed in anatomy: sub-02" in printed
    assert "n_lobar" in printed
