"""The whole workflow on a tiny simulated cohort: outputs, cohort tables, bad input, reruns."""

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg

from cmbflow.config import CandidateParams, PhaseConfig
from cmbflow.derivatives import STAGE1_TABLE
from cmbflow.detections import mirror_vetoed, superseded
from cmbflow.model import load_classifier, packaged_model_dir, sha256
from cmbflow.simulate import simulate_cohort
from cmbflow.stages import run_stage1
from browser import browse, chromium  # noqa: F401 - chromium is a fixture
from cohorts import tiny_cohort

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
    return tiny_cohort(tmp_path_factory.mktemp("bids"), 3, without_phase="003")


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("derivatives")
    result = snakemake(cohort, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


LOCATION = ["mni_x", "mni_y", "mni_z", "region", "lobe", "hemisphere"]


def test_per_subject_outputs(run):
    for sub in ("sub-001", "sub-002", "sub-003"):
        anat = run / sub / "anat"
        for desc in ("candidates", "cmb"):
            table = pd.read_csv(anat / f"{sub}_desc-{desc}_detections.tsv", sep="\t", na_values="n/a",
                                keep_default_na=False)
            assert list(table.columns[:10]) == ["x", "y", "z", "i", "j", "k", "probability", "probability_sd",
                                                "radius_mm", "volume_mm3"]
            assert table.probability_sd.between(0, 0.5).all()
            assert set(LOCATION) <= set(table.columns)
            assert set(table.region.dropna()) <= {"lobar", "deep", "infratentorial"}
            assert (table.hemisphere == np.where(table.mni_x < 0, "left", "right")).all()
            sidecar = json.loads((anat / f"{sub}_desc-{desc}_detections.json").read_text())
            assert sidecar["x"]["Units"] == "mm" and sidecar["Sources"] and sidecar["ProbabilityThreshold"] > 0
            assert sidecar["mni_x"]["Units"] == "mm" and set(sidecar["region"]["Levels"]) == {"lobar", "deep", "infratentorial"}
            variant = "magnitude" if sub == "sub-003" else "phase"  # the weights that made the calls
            assert sidecar["ClassifierWeightsSHA256"] == sha256(packaged_model_dir() / f"{variant}.safetensors")
        flags = pd.read_csv(anat / f"{sub}_desc-candidates_detections.tsv", sep="\t")
        assert {"mimic_diamagnetic", "mimic_vessel"} <= set(flags.columns)
        assert flags.mimic_diamagnetic.isna().all() == (sub == "sub-003")  # no phase, no flag
        calls = flags[flags.is_cmb]  # one call per lesion: no superseded call, none within 4 mm
        assert not calls.superseded.any() and not superseded(calls[["x", "y", "z"]], calls.probability).any()
        veto = load_classifier(None, has_phase=sub != "sub-003").mirror_veto  # the magnitude model's only
        assert np.array_equal(flags.mirror_vetoed, mirror_vetoed(flags.mirror_darkness, veto))
        assert not calls.mirror_vetoed.any()
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
    assert summary.registration_similarity.between(0, 1).all() and (summary.registration_alignment >= 2).all()
    assert (summary.field_strength_t > 0).all() and (summary.echo_time_ms > 0).all()
    detections = pd.read_csv(run / "group" / "cohort_detections.csv")
    per_subject = detections.groupby("participant_id").size().reindex(summary.participant_id, fill_value=0)
    assert list(per_subject) == list(summary.n_cmb)
    assert summary.n_cmb.sum() > 0
    assert (summary.n_lobar + summary.n_deep + summary.n_infratentorial == summary.n_cmb).all()
    assert (summary[[f"n_lobar_{lobe}" for lobe in ("frontal", "parietal", "temporal", "occipital", "insula")]]
            .sum(axis=1) == summary.n_lobar).all()
    assert (summary.n_left + summary.n_right == summary.n_cmb).all()
    assert list(summary.strictly_lobar) == list((summary.n_cmb > 0) & (summary.n_lobar == summary.n_cmb))
    assert (~summary.boston2_cmb_criterion | (summary.n_lobar >= 2) & (summary.n_deep == 0)).all()
    assert set(LOCATION) <= set(detections.columns)


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
    assert list(partial.status) == ["ok", f"failed in anatomy: {errors[0].removeprefix('cmbflow error: ')}", "ok"]

    broken.write_bytes(original)
    planned = snakemake(bids, out, "--dry-run")
    planned = planned.stdout + planned.stderr
    assert set(re.findall(r"subject=(\w+)", planned)) == {"002"}
    assert "rule cohort" in planned
    assert snakemake(bids, out).returncode == 0
    assert list(pd.read_csv(out / "group" / "cohort_summary.csv").status) == ["ok"] * 3
    assert not list((out / "group").glob("*_partial.csv"))  # out of date once the cohort is complete


@pytest.mark.dryrun
def test_lint_clean(cohort, tmp_path):
    result = snakemake(cohort, tmp_path / "out", "--lint")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.dryrun
def test_bids_app_cli_passes_arguments_to_snakemake(cohort, tmp_path):
    cmd = [sys.executable, "-m", "cmbflow.cli", str(cohort), str(tmp_path / "out"), "participant",
           "--participant-label", "002", "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(re.findall(r"subject=(\w+)", result.stdout + result.stderr)) == {"002"}


def cmbflow(bids: Path, out: Path, *args: str, background: Path | None = None):
    """The BIDS-App command, run as a user would (or started, its output to ``background``)."""
    cmd = [sys.executable, "-m", "cmbflow.cli", str(bids), str(out), *args]
    if background:
        return subprocess.Popen(cmd, stdout=background.open("w"), stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.dryrun
def test_bids_app_config_merges_with_its_own_flags(cohort, tmp_path):
    """--config is snakemake's (not an abbreviation of --configfile) and merges with the flags."""
    result = cmbflow(cohort, tmp_path / "out", "participant", "--participant-label", "002", "--threshold", "0.7",
                     "--config", "device=cpu", "classifier={model_dir: null}", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(re.findall(r"subject=(\w+)", result.stdout + result.stderr)) == {"002"}
    # The user's value reaches the config check: a bad one is the config's own one-line error.
    result = cmbflow(cohort, tmp_path / "out", "participant", "--config", "device=tpu", "--dry-run")
    assert result.returncode != 0
    assert "config: key 'device' = 'tpu'" in result.stdout + result.stderr


def test_concurrent_participant_runs_then_group_equal_one_run(run, cohort, tmp_path):
    """Two array tasks into one folder at once (one shared set-up, no clash), then group."""
    out = tmp_path / "out"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [cmbflow(cohort, out, "participant", "--participant-label", *labels, "--cores", "1", background=log)
             for labels, log in zip((["001"], ["002", "003"]), logs)]
    for proc, log in zip(procs, logs):
        assert proc.wait() == 0, log.read_text()[-3000:]
    assert not (out / "group").exists()  # participant runs for some subjects write no cohort table
    assert len(list((out / "logs").glob("run-*_config.yaml"))) == 2

    group = cmbflow(cohort, out, "group", "--cores", "1")
    assert group.returncode == 0, group.stderr[-3000:]
    assert set(re.findall(r"^(?:local)?rule (\w+):", group.stdout + group.stderr, re.M)) == {"cohort", "cohort_report",
                                                                                             "group"}
    for table in ("cohort_summary.csv", "cohort_detections.csv"):
        assert (out / "group" / table).read_text() == (run / "group" / table).read_text(), table


def test_group_of_an_empty_output_is_a_one_line_error(cohort, tmp_path):
    result = cmbflow(cohort, tmp_path / "out", "group", "--cores", "1")
    assert result.returncode != 0
    assert "group: no subject has finished outputs yet" in result.stdout + result.stderr


def test_each_run_records_its_resolved_config(run, cohort):
    records = [yaml.safe_load(p.read_text()) for p in (run / "logs").glob("run-*_config.yaml")]
    assert records and records[0]["config"]["bids_dir"] == str(cohort)
    assert records[0]["cmbflow_version"]
    assert records[0]["config"]["classifier"] == {"model_dir": None, "threshold": None, "mirror_veto": True}


@pytest.mark.dryrun
def test_unknown_participant_is_a_clear_error(cohort, tmp_path):
    result = snakemake(cohort, tmp_path / "out", "participant_label=[999]", "--dry-run")
    assert result.returncode != 0
    assert "no magnitude images found for participant(s) 999" in result.stdout + result.stderr


@pytest.mark.dryrun
def test_sessions_name_outputs_per_session(tmp_path):
    bids = tmp_path / "bids"
    simulate_cohort(bids, 1, seed=5, preset="tiny", sessions=True)
    result = snakemake(bids, tmp_path / "out", "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert "sub-001/ses-01/anat/sub-001_ses-01_desc-cmb_detections.tsv" in text


@pytest.mark.dryrun
def test_a_change_in_ratings_reruns_only_the_cohort_tables(tmp_path):
    """Every output made (empty files, all as old as each other), then a rater edits a file."""
    bids = tiny_cohort(tmp_path / "bids", 1)
    ratings = tmp_path / "ratings" / "sub-001" / "sub-001_desc-cmb_ratings.tsv"
    ratings.parent.mkdir(parents=True)
    ratings.write_text("x\ty\tz\trating\n")
    out, config = tmp_path / "out", f"ratings_dir={ratings.parents[1]}"
    listed = snakemake(bids, out, config, "--summary")
    assert listed.returncode == 0, listed.stderr[-2000:]
    now = ratings.stat().st_mtime
    for line in listed.stdout.splitlines()[1:]:
        path = Path(line.split("\t")[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (now + 10, now + 10))
    assert out / "group" / "rater_agreement.csv" in [Path(line.split("\t")[0]) for line in listed.stdout.splitlines()]

    os.utime(ratings, (now + 20, now + 20))
    planned = snakemake(bids, out, config, "--dry-run")
    assert planned.returncode == 0, planned.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", planned.stdout, flags=re.MULTILINE))
    assert counts == {"cohort": "1", "cohort_report": "1", "all": "1", "total": "3"}


def test_evaluation_against_the_simulated_truth(run, cohort):
    from cmbflow.evaluate import evaluate_outputs

    result = evaluate_outputs(cohort / "derivatives" / "simulation", run)
    calls = result["calls"]
    assert calls["scans"] == 3 and calls["lesions"] >= 6
    assert result["candidate_recall"] >= calls["sensitivity"] >= 0.5
    # The subjects with phase: at most one false call each. The magnitude-only subject (1.5 mm
    # in-plane voxels, coarser than the 0.5-1 mm the classifier was trained on) got 23 faint
    # false calls from the shipped model (README, "How well it works"; benchmarks/RESULTS.md);
    # bounded so that it cannot get worse unnoticed.
    assert result["by_phase"]["phase"]["calls"]["fp_per_scan"] <= 1
    assert result["by_phase"]["magnitude_only"]["calls"]["false_positives"] <= 24
    assert "coarser than the classifier was trained on" in (run / "sub-003_report.html").read_text()
    assert set(result["per_region"]) <= {"lobar", "deep", "infratentorial"}
    assert result["region_accuracy"]["matched_calls"] == calls["true_positives"]
    assert result["region_accuracy"]["accuracy"] >= 0.6


def test_finetune_writes_a_new_model_from_ratings_and_never_the_shipped_one(run, cohort, tmp_path):
    from cmbflow.errors import InputError
    from cmbflow.evaluate import write_ratings_from_truth
    from cmbflow.finetune import FinetuneParams, finetune

    shipped = {path.name: path.read_bytes() for path in packaged_model_dir().iterdir()}
    few, ratings, site = tmp_path / "few", tmp_path / "ratings", tmp_path / "site"
    truth = cohort / "derivatives" / "simulation"
    write_ratings_from_truth(truth, run, few, ["sub-001"])
    refused = subprocess.run([sys.executable, "-m", "cmbflow.cli", "finetune", str(run), str(few), str(site)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and not site.exists()
    assert re.fullmatch(
        f"cmbflow error: {re.escape(str(few))}: 1 rated scans with \\d+ rated microbleeds are too few to tune on; "
        r"rate at least 3 scans with 10 microbleeds in all \(accepted calls, and missed bleeds that stage 1 found "
        r"as candidates\)\n", refused.stderr), refused.stderr

    write_ratings_from_truth(truth, run, ratings, ["sub-001", "sub-002", "sub-003"])
    quick = FinetuneParams(min_microbleeds=3, folds=3, epochs=1, replay_scans=1, replay_preset="tiny")
    card = finetune(run, ratings, site, params=quick)
    assert sorted(path.name for path in site.iterdir()) == [
        "MODEL_CARD.md", "magnitude.safetensors", "model_card.json", "phase.safetensors"]
    # Both variants tuned (sub-003 has no phase): cross-validated over whole scans, before and after.
    for variant, scans in (("phase", 2), ("magnitude", 3)):
        entry = card["models"][variant]
        assert entry["tuned"] and 0.25 <= entry["temperature"] <= 4
        cv = entry["cross_validation"]
        assert cv["before"]["scans"] == cv["after"]["scans"] == scans == sum(len(f["scans"]) for f in cv["per_fold"])
        classifier = load_classifier(site, has_phase=variant == "phase")
        assert (classifier.threshold, classifier.temperature) == (entry["threshold"], entry["temperature"])
        assert classifier.mirror_veto == load_classifier(None, has_phase=variant == "phase").mirror_veto
    assert set(card["tuned_on"]["scans"]) == {"sub-001", "sub-002", "sub-003"}
    assert json.loads((site / "model_card.json").read_text()) == json.loads(json.dumps(card))
    for target in (site, packaged_model_dir()):
        with pytest.raises(InputError, match="never overwritten"):
            finetune(run, ratings, target, params=quick)
    assert {path.name: path.read_bytes() for path in packaged_model_dir().iterdir()} == shipped


def test_calls_map_to_the_true_mni_position(run, cohort):
    """Subject -> MNI through the saved transform lands where the simulator put the bleed."""
    errors = []
    for sub in ("sub-001", "sub-002", "sub-003"):
        truth = pd.read_csv(cohort / "derivatives" / "simulation" / sub / "anat" / f"{sub}_desc-truth_lesions.tsv", sep="\t")
        calls = pd.read_csv(run / sub / "anat" / f"{sub}_desc-cmb_detections.tsv", sep="\t")
        for _, bleed in truth[truth.kind == "cmb"].iterrows():
            distance = np.linalg.norm(calls[["x", "y", "z"]].to_numpy() - bleed[["x", "y", "z"]].to_numpy(float), axis=1)
            if len(calls) and distance.min() <= 2.0:
                call = calls.iloc[int(distance.argmin())]
                errors.append(np.linalg.norm(call[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
                                             - bleed[["mni_x", "mni_y", "mni_z"]].to_numpy(float)))
    assert len(errors) >= 3 and np.median(errors) < 4.0 and max(errors) < 8.0, errors


def test_output_passes_the_bids_validator(run):
    """The official validator (bids-validator-deno) finds no error; warnings are printed."""
    validator = shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent)) or "bids-validator-deno"
    result = subprocess.run([validator, str(run), "--format", "json"], capture_output=True, text=True, check=False)
    issues = json.loads(result.stdout)["issues"]["issues"]
    for issue in issues:
        print(issue["severity"], issue["code"], issue.get("subCode") or "", issue.get("location") or "")
    errors = [i for i in issues if i["severity"] == "error"]
    assert not errors, errors[:5]
    assert (run / "atlas" / "tpl-MNI152NLin2009aSym_atlas-MARS_dseg.nii.gz").exists()


@pytest.mark.dryrun
def test_train_target_needs_no_dataset_and_plans_every_step(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--dry-run", "train", "--config", f"training={{dir: {tmp_path / 'training'}}}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    # Stage 1 is one job per scan: 40 training and 20 validation scans by default.
    assert counts == {"simulate_cohort": "2", "stage1_scan": "60", "training_patches": "1",
                      "train_classifier": "1", "validate_classifier": "1", "train": "1", "total": "66"}


def test_training_stage1_finds_what_the_workflow_finds(cohort, run, tmp_path):
    """snakemake train runs stage 1 in one job per scan: same candidates, same features."""
    for label in ("sub-001", "sub-003"):  # with and without phase
        run_stage1(cohort, label, tmp_path, "last", PhaseConfig(), CandidateParams(), "cpu")
        stage1 = pd.read_csv(tmp_path / label / "anat" / f"{label}{STAGE1_TABLE}.tsv", sep="\t")
        workflow = pd.read_csv(run / label / "anat" / f"{label}_desc-candidates_detections.tsv", sep="\t")
        assert len(stage1) > 0
        columns = stage1.columns.drop(["probability", "probability_sd"])
        pd.testing.assert_frame_equal(stage1[columns], workflow[columns])


def test_training_leaves_out_a_scan_the_workflow_would_reject(cohort, tmp_path):
    """A scan whose brain mask fails is recorded as left out, with no candidates table to train on."""
    bids = Path(shutil.copytree(cohort / "sub-002", tmp_path / "bids" / "sub-002")).parent
    mag = bids / "sub-002" / "anat" / "sub-002_part-mag_T2starw.nii.gz"
    image = nib.load(mag)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), mag)  # no signal anywhere
    run_stage1(bids, "sub-002", tmp_path / "stage1", "last", PhaseConfig(), CandidateParams(), "cpu")
    folder = tmp_path / "stage1" / "sub-002" / "anat"
    assert not list(folder.glob(f"*{STAGE1_TABLE}.tsv"))
    assert json.loads((folder / "sub-002_desc-excluded.json").read_text())["excluded"].startswith(f"sub-002: {mag}")


@pytest.mark.dryrun
def test_analysis_without_dataset_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    assert "config: missing bids_dir, output_dir; run with --config bids_dir=PATH output_dir=PATH" in result.stdout + result.stderr


SUBJECT_SECTIONS = ("summary", "inputs", "mask", "registration", "calls", "rejected", "metrics")
COHORT_SECTIONS = ("summary", "plots", "protocols", "regions", "flagged")


def test_report_pages_render_in_a_headless_browser(run, chromium, tmp_path):
    pages = {run / f"sub-00{i}_report.html": SUBJECT_SECTIONS for i in (1, 2, 3)}
    pages[run / "group" / "cohort_report.html"] = COHORT_SECTIONS
    for page, sections in pages.items():
        source = page.read_text()
        assert "<link" not in source and "src=\"http" not in source  # self-contained
        images = re.findall(r'<img src="([^"]+)"', source)
        assert images and all(src.startswith("data:image/png;base64,") for src in images)
        for src in images:
            png = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        dom = browse(chromium, page, "--dump-dom")
        for section in sections:
            assert f'id="{section}"' in dom, (page.name, section)
        # The page's script counts the images the browser decoded (naturalWidth > 0) after load.
        total = re.search(r'data-images-total="(\d+)"', dom)
        rendered = re.search(r'data-images-rendered="(\d+)"', dom)
        assert total and rendered and int(total[1]) == int(rendered[1]) == len(images), page.name
        shot = tmp_path / f"{page.stem}.png"
        browse(chromium, page, f"--screenshot={shot}", "--window-size=1400,1600")
        pixels = mpimg.imread(shot)[..., :3]
        assert pixels.std() > 0.05, f"{page.name} screenshot is blank"


def test_snakemake_report_holds_the_qc_figures(run, cohort, tmp_path):
    report = tmp_path / "report.zip"
    result = snakemake(cohort, run, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
    for sub in ("sub-001", "sub-002", "sub-003"):
        for desc in ("brainmask", "calls", "rejected"):
            assert any(n.endswith(f"{sub}_desc-{desc}_T2starw.png") for n in names), (sub, desc, names[:20])
        assert any(n.endswith(f"{sub}_space-MNI152NLin2009aSym_desc-registration_T2starw.png") for n in names)
    assert any(n.endswith("cohort_cmb_counts.png") for n in names)
