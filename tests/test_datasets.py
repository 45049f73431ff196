"""Datasets as they come: subjects with and without sessions, several runs, _swi/_GRE file names."""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmbflow.cli import main
from cmbflow.cohort import subject_status
from cmbflow.simulate import simulate_cohort
from test_workflow import REPO, snakemake

pytestmark = pytest.mark.workflow

# Output files of each layout (docs/inputs.md): a subject without a session as in a dataset
# without sessions; a session's logs, benchmarks and report page in a ses-01/ subfolder.
NO_SESSION = ["sub-001/anat/sub-001_desc-cmb_detections.tsv", "sub-001_report.html",
              "logs/anatomy/sub-001.log", "benchmarks/detect/sub-001.tsv"]
SESSION = ["sub-002/ses-01/anat/sub-002_ses-01_desc-cmb_detections.tsv", "ses-01/sub-002_ses-01_report.html",
           "logs/anatomy/ses-01/sub-002_ses-01.log", "benchmarks/detect/ses-01/sub-002_ses-01.tsv"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two tiny subjects: sub-001 without a session, sub-002 in ses-01."""
    bids = tmp_path_factory.mktemp("mixed")
    simulate_cohort(bids, 2, seed=11, preset="tiny", sessions=True)
    for session in [bids / "sub-001" / "ses-01", bids / "derivatives" / "simulation" / "sub-001" / "ses-01"]:
        (session.parent / "anat").mkdir()
        for path in (session / "anat").iterdir():
            path.rename(session.parent / "anat" / path.name.replace("_ses-01", ""))
        shutil.rmtree(session)
    return bids


def gre_cohort(bids: Path) -> Path:
    """Two tiny subjects without phase (magnitude only, as the _swi/_GRE datasets come)."""
    simulate_cohort(bids, 2, seed=11, preset="tiny")
    for phase in bids.glob("sub-*/anat/*part-phase*"):
        phase.unlink()
    return bids


@pytest.mark.dryrun
def test_mixed_sessions_plan_both_layouts(mixed, tmp_path):
    result = snakemake(mixed, tmp_path / "out", "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    for path in NO_SESSION + SESSION:
        assert f"{tmp_path / 'out'}/{path}" in text, path


def test_mixed_sessions_run(mixed, tmp_path):
    out = tmp_path / "out"
    result = snakemake(mixed, out)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in NO_SESSION + SESSION:
        assert (out / path).is_file(), path
    summary = pd.read_csv(out / "group" / "cohort_summary.csv", dtype=str)
    ids = summary[["participant_id", "session_id"]].fillna("").values.tolist()
    assert ids == [["sub-001", ""], ["sub-002", "ses-01"]]
    cohort_page = (out / "group" / "cohort_report.html").read_text()
    for page in ("sub-001_report.html", "ses-01/sub-002_ses-01_report.html"):
        assert f'href="../{page}"' in cohort_page, page
    validator = shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent)) or "bids-validator-deno"
    report = subprocess.run([validator, str(out), "--format", "json"], capture_output=True, text=True, check=False)
    errors = [i for i in json.loads(report.stdout)["issues"]["issues"] if i["severity"] == "error"]
    assert not errors, errors[:5]


@pytest.mark.dryrun
def test_two_runs_choice_is_printed_and_configurable(tmp_path):
    bids = gre_cohort(tmp_path / "bids")
    for scan in list(bids.glob("sub-002/anat/sub-002_part-mag_T2starw.*")):
        for run in ("1", "2"):
            shutil.copy(scan, scan.with_name(scan.name.replace("_part-mag", f"_run-{run}_part-mag")))
        scan.unlink()
    first = tmp_path / "first.yaml"
    first.write_text("select: {run: 1}\n")
    for extra, used, rule in (((), "run-2", "last"), (("--configfile", str(first)), "run-1", "1")):
        result = snakemake(bids, tmp_path / "out", *extra, "--dry-run")
        text = result.stdout + result.stderr
        assert result.returncode == 0, text[-3000:]
        assert f"cmbflow: sub-002: 2 runs (run-1, run-2): using {used} (config select.run: {rule})" in text
        assert f"input: {bids}/sub-002/anat/sub-002_{used}_part-mag_T2starw.nii.gz" in text
        assert "cmbflow: sub-001" not in text  # one scan, no choice
        assert "sub-002/anat/sub-002_desc-cmb_detections.tsv" in text  # outputs name no run


@pytest.mark.dryrun
def test_swi_and_gre_file_names_with_the_example_config(tmp_path):
    bids = gre_cohort(tmp_path / "bids")
    for subject, suffix in (("001", "swi"), ("002", "GRE")):
        for scan in bids.glob(f"sub-{subject}/anat/*_part-mag_T2starw.*"):
            scan.rename(scan.with_name(scan.name.replace("part-mag_T2starw", suffix)))
    plain = snakemake(bids, tmp_path / "out", "--dry-run")
    assert plain.returncode != 0 and "no magnitude images found" in plain.stdout + plain.stderr
    example = REPO / "config" / "examples" / "swi.yaml"
    result = snakemake(bids, tmp_path / "out", "--configfile", str(example), "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert set(re.findall(r"input: \S+/(sub-00\d_\w+\.nii\.gz)", text)) == {"sub-001_swi.nii.gz", "sub-002_GRE.nii.gz"}
    for subject in ("001", "002"):
        assert f"sub-{subject}/anat/sub-{subject}_desc-cmb_detections.tsv" in text


@pytest.mark.dryrun  # no snakemake run: the partial cohort table's reading of a mixed dataset's logs
def test_status_reads_a_sessions_logs_in_their_subfolder(tmp_path):
    log = tmp_path / "logs" / "detect" / "ses-01" / "sub-002_ses-01.log"
    log.parent.mkdir(parents=True)
    log.write_text("t t ERROR root: sub-002_ses-01: broken\n")
    assert subject_status("sub-002_ses-01", tmp_path / "none.json", tmp_path / "logs") == \
        "failed in detect: sub-002_ses-01: broken"


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two tiny subjects with three sessions each, the head moved and new bleeds at each follow-up;
    ses-03 held back (added later by a test)."""
    root = tmp_path_factory.mktemp("sessions")
    simulate_cohort(root / "all", 2, seed=12, preset="tiny", sessions=3)
    bids = Path(shutil.copytree(root / "all", root / "bids", ignore=shutil.ignore_patterns("ses-03")))
    return root / "all", bids


def test_two_sessions_track_new_bleeds_and_a_later_session_reruns_only_its_subject(sessions, tmp_path):
    everything, bids = sessions
    out = tmp_path / "out"
    # A follow-up that arrived truncated: the other subject is tracked, and the partial cohort
    # table says why sub-002's follow-up is not; once fixed, a rerun completes the table.
    broken = bids / "sub-002" / "ses-02" / "anat" / "sub-002_ses-02_part-mag_T2starw.nii.gz"
    original = broken.read_bytes()
    broken.write_bytes(gzip.compress(gzip.decompress(original)[:50_000]))
    failed = snakemake(bids, out, "--keep-going")
    assert failed.returncode != 0
    partial = pd.read_csv(out / "group" / "cohort_longitudinal_partial.csv", dtype={"session": str})
    assert partial[["participant_id", "session"]].values.tolist() == [["sub-001", "ses-02"], ["sub-002", "ses-02"]]
    assert partial["status"][0] == "ok"
    assert partial["status"][1].startswith(f"failed in anatomy: sub-002_ses-02: {broken}: not a readable NIfTI image")
    assert partial["aria_h_grade"].notna().tolist() == [True, False]
    assert not (out / "group" / "cohort_longitudinal.csv").exists()
    broken.write_bytes(original)

    result = snakemake(bids, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "group" / "cohort_longitudinal_partial.csv").exists()
    cohort = pd.read_csv(out / "group" / "cohort_longitudinal.csv", dtype={"session": str})
    assert cohort[["participant_id", "baseline_session", "session"]].values.tolist() == [
        ["sub-001", "ses-01", "ses-02"], ["sub-002", "ses-01", "ses-02"]]
    assert set(cohort["aria_h_grade"]) <= {"none", "mild", "moderate", "severe"}
    assert (cohort["registration_similarity"] > 0.15).all()  # measured 0.23 and 0.27 (tiny, noisy scans)
    for subject, row in cohort.set_index("participant_id").iterrows():
        table = pd.read_csv(out / subject / "anat" / f"{subject}_desc-longitudinal_detections.tsv", sep="\t")
        assert set(table["status"]) <= {"baseline", "persisting", "new", "not_seen"}
        follow = table[table["session"] == "ses-02"]
        assert (follow["status"] == "new").sum() == row["n_new"]
        # The head moved up to 8 mm and 8 degrees; in baseline space a persisting lesion is where it was.
        xyz = ["x_baseline", "y_baseline", "z_baseline"]
        then = table[table["session"] == "ses-01"].set_index("track")[xyz]
        now = follow[follow["status"] == "persisting"].set_index("track")[xyz]
        moved = (now - then.reindex(now.index)).dropna()
        assert ((moved**2).sum(axis=1) ** 0.5 < 3.0).all(), moved
        truth = pd.read_csv(bids / "derivatives" / "simulation" / subject / "ses-02" / "anat" /
                            f"{subject}_ses-02_desc-truth_lesions.tsv", sep="\t")
        print(subject, "new at ses-02: truth", int((truth["session_introduced"] == "ses-02").sum()),
              "called", row["n_new"])
    page = (out / "sub-002_desc-longitudinal_report.html").read_text()
    assert "ARIA-H grade" in page and page.count("data:image/png;base64,") == cohort.set_index("participant_id").loc[
        "sub-002", "n_new"]
    assert main(["evaluate", str(bids / "derivatives" / "simulation"), str(out), "--json", str(tmp_path / "e.json")]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())["longitudinal"]
    assert scored["followups"] == 2 and len(scored["per_followup"]) == 2

    # A session added later: its own jobs, its subject's longitudinal step and the cohort's, nothing else.
    shutil.copytree(everything / "sub-001" / "ses-03", bids / "sub-001" / "ses-03")
    plan = snakemake(bids, out, "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = set()
    for block in re.split(r"^\s*(?:local)?rule (?=\w+:$)", plan.stdout, flags=re.M)[1:]:
        rule, body = block.split(":", 1)
        wildcards = re.search(r"^\s*wildcards: (.*)$", body.split("\n\n", 1)[0], re.M)
        planned.add((rule, wildcards.group(1) if wildcards else ""))
    rules = {rule for rule, _ in planned}
    assert {"anatomy", "detect", "subject_report", "longitudinal", "cohort_longitudinal"} <= rules
    assert rules <= {"anatomy", "phase_preproc", "detect", "subject_report", "longitudinal", "cohort",
                     "cohort_report", "cohort_longitudinal", "all"}
    assert all("subject=001" in wildcards for _, wildcards in planned if wildcards), planned
