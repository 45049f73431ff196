"""The whole workflow on a tiny simulated cohort: outputs, cohort tables, bad input, reruns."""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmbflow.simulate import simulate_cohort

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]


def snakemake(bids: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(out),
           "--cores", "2", "--config", f"bids_dir={bids}", f"output_dir={out}", *extra]
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three tiny subjects; sub-003 without phase (magnitude-only)."""
    bids = tmp_path_factory.mktemp("bids")
    simulate_cohort(bids, 3, seed=11, preset="tiny")
    for f in (bids / "sub-003" / "anat").glob("*part-phase*"):
        f.unlink()
    return bids


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("derivatives")
    result = snakemake(cohort, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_per_subject_outputs(run):
    for sub in ("sub-001", "sub-002", "sub-003"):
        anat = run / sub / "anat"
        for desc in ("candidates", "cmb"):
            table = pd.read_csv(anat / f"{sub}_desc-{desc}_detections.tsv", sep="\t")
            assert list(table.columns[:9]) == ["x", "y", "z", "i", "j", "k", "probability", "radius_mm", "volume_mm3"]
            sidecar = json.loads((anat / f"{sub}_desc-{desc}_detections.json").read_text())
            assert sidecar["x"]["Units"] == "mm" and sidecar["Sources"]
        assert (anat / f"{sub}_desc-brain_mask.nii.gz").exists()
        assert (run / sub / "xfm" / f"{sub}_from-T2starw_to-MNI152NLin2009aSym_mode-image_xfm.mat").exists()
    assert (run / "sub-001" / "anat" / "sub-001_desc-swi_T2starw.nii.gz").exists()
    assert not (run / "sub-003" / "anat" / "sub-003_desc-swi_T2starw.nii.gz").exists()
    description = json.loads((run / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "cmbflow"


def test_detections_are_world_coordinates_of_the_input(run, cohort):
    """i j k must be the input magnitude's voxel that contains x y z (through its affine)."""
    table = pd.read_csv(run / "sub-001" / "anat" / "sub-001_desc-candidates_detections.tsv", sep="\t")
    affine = nib.load(cohort / "sub-001" / "anat" / "sub-001_part-mag_T2starw.nii.gz").affine
    ijk = nib.affines.apply_affine(np.linalg.inv(affine), table[["x", "y", "z"]].to_numpy())
    assert len(table) and np.array_equal(np.rint(ijk).astype(int), table[["i", "j", "k"]].to_numpy())


def test_cohort_tables(run):
    summary = pd.read_csv(run / "group" / "cohort_summary.csv")
    assert list(summary.participant_id) == ["sub-001", "sub-002", "sub-003"]
    assert list(summary.phase_used) == [True, True, False]
    assert summary.brain_volume_ml.between(900, 2000).all()
    assert summary.registration_similarity.between(0, 1).all()
    assert (summary.field_strength_t > 0).all() and (summary.echo_time_ms > 0).all()
    detections = pd.read_csv(run / "group" / "cohort_detections.csv")
    per_subject = detections.groupby("participant_id").size().reindex(summary.participant_id, fill_value=0)
    assert list(per_subject) == list(summary.n_cmb)
    assert summary.n_cmb.sum() > 0


def test_broken_subject_keeps_others_going_and_reruns_only_itself(cohort, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(cohort, bids)
    broken = bids / "sub-002" / "anat" / "sub-002_part-mag_T2starw.nii.gz"
    original = broken.read_bytes()
    broken.write_bytes(gzip.compress(gzip.decompress(original)[:50_000]))  # truncated transfer
    out = tmp_path / "out"

    result = snakemake(bids, out, "--keep-going")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("cmbflow error:")]
    assert errors == [f"cmbflow error: sub-002: {broken}: not a readable NIfTI image "
                      + errors[0].split("not a readable NIfTI image ", 1)[1]]
    assert (out / "sub-001" / "anat" / "sub-001_desc-cmb_detections.tsv").exists()
    assert (out / "sub-003" / "anat" / "sub-003_desc-cmb_detections.tsv").exists()
    assert not list((out / "sub-002").rglob("*.nii.gz")) if (out / "sub-002").exists() else True
    partial = pd.read_csv(out / "group" / "cohort_summary_partial.csv")
    assert list(partial.status) == ["ok", f"failed in bias_correct: {errors[0].removeprefix('cmbflow error: ')}", "ok"]

    broken.write_bytes(original)
    planned = snakemake(bids, out, "--dry-run")
    planned = planned.stdout + planned.stderr
    assert set(re.findall(r"subject=(\w+)", planned)) == {"002"}
    assert "rule cohort" in planned
    assert snakemake(bids, out).returncode == 0
    assert list(pd.read_csv(out / "group" / "cohort_summary.csv").status) == ["ok"] * 3
    assert not list((out / "group").glob("*_partial.csv"))  # out of date once the cohort is complete


def test_lint_clean(cohort, tmp_path):
    result = snakemake(cohort, tmp_path / "out", "--lint")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_bids_app_cli_passes_arguments_to_snakemake(cohort, tmp_path):
    cmd = [sys.executable, "-m", "cmbflow.cli", str(cohort), str(tmp_path / "out"), "participant",
           "--participant-label", "002", "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(re.findall(r"subject=(\w+)", result.stdout + result.stderr)) == {"002"}


def test_unknown_participant_is_a_clear_error(cohort, tmp_path):
    result = snakemake(cohort, tmp_path / "out", "participant_label=[999]", "--dry-run")
    assert result.returncode != 0
    assert "no magnitude images found for participant(s) 999" in result.stdout + result.stderr


def test_sessions_name_outputs_per_session(tmp_path):
    bids = tmp_path / "bids"
    simulate_cohort(bids, 1, seed=5, preset="tiny", sessions=True)
    result = snakemake(bids, tmp_path / "out", "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert "sub-001/ses-01/anat/sub-001_ses-01_desc-cmb_detections.tsv" in text


def test_evaluation_against_the_simulated_truth(run, cohort):
    from cmbflow.evaluate import evaluate_outputs

    result = evaluate_outputs(cohort / "derivatives" / "simulation", run)
    calls = result["calls"]
    assert calls["scans"] == 3 and calls["lesions"] >= 6
    assert result["candidate_recall"] >= calls["sensitivity"] >= 0.5
    assert calls["fp_per_scan"] <= 3
    assert set(result["per_region"]) <= {"lobar", "deep", "infratentorial"}


def test_train_target_needs_no_dataset_and_plans_every_step(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--dry-run", "train", "--config", f"training={{dir: {tmp_path / 'training'}}}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    assert counts == {"simulate_cohort": "2", "stage1_cohort": "2", "training_patches": "1",
                      "train_classifier": "1", "validate_classifier": "1", "train": "1", "total": "8"}


def test_analysis_without_dataset_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    assert "config: missing bids_dir, output_dir; run with --config bids_dir=PATH output_dir=PATH" in result.stdout + result.stderr
