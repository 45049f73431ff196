"""The workflow under bad inputs, kills and a cut network, on a tiny simulated cohort.

One run holds many broken subjects at once (--keep-going must finish the good one); a run killed
twice resumes to the same bytes as an uninterrupted run (which also shows that two runs give
identical tables); the uninterrupted run has no network and leaves its inputs untouched.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohorts import tiny_cohort

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900


def command(bids: Path, out: Path, *extra: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(out),
            "--cores", "2", "--config", f"bids_dir={bids}", f"output_dir={out}", *extra]


def snakemake(bids: Path, out: Path, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *command(bids, out, *extra)], capture_output=True, text=True, cwd=REPO,
                          timeout=RUN_TIMEOUT_S)


def no_network_prefix() -> tuple[str, ...]:
    """``unshare -n``: run in a new network namespace, which has only a loopback that is down."""
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        pytest.skip("cannot cut the network here (unshare -n needs root or user namespaces)")
    return ("unshare", "-n")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tables(out: Path) -> dict[str, bytes]:
    """Every table and sidecar the workflow wrote (not logs or benchmarks: they hold times)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.suffix in (".tsv", ".csv", ".json") and p.relative_to(out).parts[0] not in ("logs", "benchmarks", ".snakemake")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("bids"), 2)


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """An uninterrupted run with the network cut; the input tree hashed before and after."""
    prefix = no_network_prefix()
    before = tree_hashes(cohort)
    out = tmp_path_factory.mktemp("reference")
    result = snakemake(cohort, out, prefix=prefix)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, before, tree_hashes(cohort)


def test_runs_offline_and_never_modifies_its_inputs(reference):
    out, before, after = reference
    assert (out / "group" / "cohort_summary.csv").exists()
    assert before == after


def test_killed_run_resumes_to_identical_results(cohort, reference, tmp_path):
    """SIGKILL snakemake and its jobs (as a crashed node would) twice, then resume."""
    out = tmp_path / "out"
    for marker in ("*_desc-n4_T2starw.nii.gz", "*_desc-candidates_detections.tsv"):
        snakemake(cohort, out, "--unlock")
        with open(tmp_path / "killed.log", "w") as log:
            proc = subprocess.Popen(command(cohort, out, "--rerun-incomplete"), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list(out.rglob(marker)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before {marker} appeared:\n{(tmp_path / 'killed.log').read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "group" / "cohort_summary.csv").exists()
    assert snakemake(cohort, out, "--unlock").returncode == 0
    result = snakemake(cohort, out, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, uninterrupted = tables(out), tables(reference[0])
    assert sorted(resumed) == sorted(uninterrupted)
    assert [name for name in resumed if resumed[name] != uninterrupted[name]] == []


# Each broken subject: how it is broken, and the file, the job and the words its error must name.
def empty(anat, s):
    (anat / f"{s}_part-mag_T2starw.nii.gz").write_bytes(b"")


def not_nifti(anat, s):
    (anat / f"{s}_part-mag_T2starw.nii.gz").write_bytes(b"%PDF-1.4 not an image" * 100)


def nan_voxels(anat, s):
    edit(anat / f"{s}_part-mag_T2starw.nii.gz", lambda data, affine: (np.where(data > data.mean(), np.nan, data), affine))


def constant(anat, s):
    edit(anat / f"{s}_part-mag_T2starw.nii.gz", lambda data, affine: (np.zeros_like(data), affine))


def absurd_voxels(anat, s):
    edit(anat / f"{s}_part-mag_T2starw.nii.gz", lambda data, affine: (data, affine @ np.diag([20, 20, 20, 1])))


def four_d_without_echo_times(anat, s):
    edit(anat / f"{s}_part-mag_T2starw.nii.gz", lambda data, affine: (np.stack([data, data], -1), affine))


def phase_echo_time_differs(anat, s):
    sidecar = anat / f"{s}_part-phase_T2starw.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"EchoTime": 0.5}))


def phase_shifted(anat, s):
    shift = np.eye(4)
    shift[:3, 3] = 5.0
    edit(anat / f"{s}_part-phase_T2starw.nii.gz", lambda data, affine: (data, shift @ affine))


def phase_in_hertz(anat, s):
    sidecar = anat / f"{s}_part-phase_T2starw.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"Units": "Hz"}))


def edit(path, change):
    img = nib.load(path)
    data, affine = change(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    nib.save(nib.Nifti1Image(data, affine), path)


BROKEN = {  # subject: (break it, file, failing job, part of the message)
    "101": (empty, "part-mag_T2starw.nii.gz", "anatomy", "file is empty (0 bytes); re-export or re-copy"),
    "102": (not_nifti, "part-mag_T2starw.nii.gz", "anatomy", "not a readable NIfTI image"),
    "103": (nan_voxels, "part-mag_T2starw.nii.gz", "anatomy", "voxels are NaN or infinite; fix the export"),
    "104": (constant, "part-mag_T2starw.nii.gz", "anatomy", "image is constant (every voxel is 0)"),
    "105": (absurd_voxels, "part-mag_T2starw.nii.gz", "anatomy", "implausible voxel size"),
    "106": (four_d_without_echo_times, "part-mag_T2starw.nii.gz", "anatomy", "4D image of shape"),
    "107": (phase_echo_time_differs, "part-phase_T2starw.nii.gz", "anatomy", "EchoTime 0.5 s differs from the magnitude's"),
    "108": (phase_shifted, "part-phase_T2starw.nii.gz", "phase_preproc", "affine differs from the magnitude's affine"),
    "109": (phase_in_hertz, "part-phase_T2starw.nii.gz", "phase_preproc", "not a phase unit"),
}


def test_broken_subjects_fail_alone_with_one_line_each(cohort, tmp_path):
    bids = shutil.copytree(cohort, tmp_path / "bids", ignore=shutil.ignore_patterns("sub-002", "derivatives"))
    for subject, (make_broken, *_) in BROKEN.items():
        anat = bids / f"sub-{subject}" / "anat"
        shutil.copytree(bids / "sub-001" / "anat", anat)
        for f in anat.iterdir():
            f.rename(anat / f.name.replace("sub-001", f"sub-{subject}"))
        make_broken(anat, f"sub-{subject}")
    out = tmp_path / "out"

    result = snakemake(bids, out, "--keep-going")
    assert result.returncode != 0
    errors = sorted(line.removeprefix("cmbflow error: ") for line in result.stderr.splitlines()
                    if line.startswith("cmbflow error: "))
    assert len(errors) == len(BROKEN), errors
    status = pd.read_csv(out / "group" / "cohort_summary_partial.csv").set_index("participant_id").status
    assert status["sub-001"] == "ok"
    for (subject, (_, name, job, words)), line in zip(sorted(BROKEN.items()), errors):
        path = bids / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}"
        assert line.startswith(f"sub-{subject}: {path}: ") and words in line, line
        assert status[f"sub-{subject}"] == f"failed in {job}: {line}"
        assert not (out / f"sub-{subject}" / "anat" / f"sub-{subject}_desc-qc_metrics.json").exists()
    # No half-written files: no temporary files, and none of a failed job's outputs.
    assert [p for p in out.rglob(".*") if p.name != ".bidsignore" and ".snakemake" not in p.relative_to(out).parts] == []
    for subject in ("101", "107"):
        assert not [p for p in (out / f"sub-{subject}").rglob("*") if p.is_file()]
    for subject in ("108", "109"):
        assert (out / f"sub-{subject}" / "anat" / f"sub-{subject}_desc-brain_mask.nii.gz").exists()
        assert not list((out / f"sub-{subject}").rglob("*hpphase*")) and not list((out / f"sub-{subject}").rglob("*swi*"))
    assert (out / "sub-001" / "anat" / "sub-001_desc-cmb_detections.tsv").exists()
    assert not (out / "group" / "cohort_summary.csv").exists()
    assert "cmbflow: 9 of 10 subjects have no results" in result.stderr


@pytest.mark.parametrize(
    "config, message",
    [
        ([], "{bids}: no magnitude images found; check bids_dir, participant_label and the pybids_inputs filters"),
        (["bids_dir=/no/such/dataset"], "config: key 'bids_dir' = '/no/such/dataset': Value error, no such folder"),
        (["devcie=cpu"], "config: unknown key 'devcie' (check its spelling against config/config.yaml)"),
        (["phase={highpass_sigma_mm: wide}"], "config: key 'phase.highpass_sigma_mm' = 'wide': Input should be a valid number"),
    ],
)
def test_problems_of_the_whole_run_stop_it_before_any_job(tmp_path, config, message):
    """A dataset without matching files, or a config that is wrong: one line, nothing run."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "empty", "BIDSVersion": "1.10.0"}))
    result = snakemake(bids, tmp_path / "out", *config, "--dry-run")
    assert result.returncode != 0
    assert message.format(bids=bids) in result.stdout + result.stderr
