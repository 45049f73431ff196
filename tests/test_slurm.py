"""The workflow on a real SLURM cluster (one node on this machine) through profiles/slurm.

Checks that every job goes through sbatch, that one subject costs at most two SLURM jobs (its
preparation and its detection), that the results equal a run on one machine, and that the ways
of recovering that the README promises work on the cluster: a broken subject, a killed
snakemake, a subject added later. Needs root and Debian's SLURM and munge (`make system-deps`
installs them); skipped otherwise.
"""

import gzip
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

import slurm_cluster
from cmbflow.simulate import simulate_cohort
from cohorts import tiny_cohort

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
# Settings for this test cluster only, on top of profiles/slurm: it has no slurmdbd, so sacct
# cannot report job states (squeue can, as finished jobs stay listed for MinJobAge); quick first
# status check; the SLURM logs of successful jobs are kept so the tests can read them. A GPU for
# the rule that can use one (detect), with 2 threads, as profiles/slurm shows a site how to ask (the
# node's is fake: the work runs on the CPU, device=cpu by default).
CLUSTER_ONLY = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
                "--slurm-keep-successful-logs", "--set-resources", "detect:gpu=1", "--set-threads", "detect=2"]
RUN_TIMEOUT_S = 1200

# The per-subject SLURM jobs and their rules, as the profile groups them.
GROUPS = [entry.split("=") for entry in yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())["groups"]]
PREP_RULES = tuple(rule for rule, group in GROUPS if group == "subject_prep")
DETECT_RULES = tuple(rule for rule, group in GROUPS if group == "subject_detect")
# The jobs for the whole dataset; a rerun for some subjects redoes the cohort ones.
COHORT_JOBS = {("cohort", None), ("cohort_report", None)}
DATASET_JOBS = COHORT_JOBS | {("dataset_description", None), ("mars_atlas", None)}
HAS_PHASE = {"001": True, "002": False, "003": True}


def subject_jobs(subject: str) -> set[tuple[str, str]]:
    rules = [r for r in PREP_RULES + DETECT_RULES if r != "phase_preproc" or HAS_PHASE[subject]]
    return {(rule, subject) for rule in rules}


def snakemake(bids: Path, out: Path, *extra: str, cluster: slurm_cluster.SlurmCluster | None = None,
              background: Path | None = None):
    """Run the workflow: on the test cluster (profiles/slurm) when given one, else locally (profiles/local).

    With ``background`` (a file for the output), start it and return the process.
    """
    profile = ["--profile", str(REPO / "profiles" / "slurm"), *CLUSTER_ONLY] if cluster else \
        ["--profile", str(REPO / "profiles" / "local"), "--cores", "2"]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(out),
           "--config", f"bids_dir={bids}", f"output_dir={out}", *profile, *extra]
    out.mkdir(parents=True, exist_ok=True)
    env = cluster.env if cluster else None
    if background:
        with background.open("w") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                          timeout=RUN_TIMEOUT_S)


def printed_jobs(text: str) -> set[tuple[str, str | None]]:
    """(rule, subject) of every job block snakemake printed: the plan of a dry run, or the jobs it ran."""
    jobs = set()
    for block in re.split(r"^\s*(?:local)?rule (?=\w+:$)", text, flags=re.M)[1:]:
        rule, body = block.split(":", 1)
        body = body.split("\n\n", 1)[0]  # one job's block ends at the first blank line
        subject = re.search(r"^\s*wildcards: .*?subject=(\w+)", body, re.M)
        if rule != "all":
            jobs.add((rule, subject.group(1) if subject else None))
    return jobs


@dataclass
class SlurmJob:
    """A SLURM job that snakemake submitted, with what slurmctld knows of it and what it ran."""

    id: str
    kind: str  # the profile's group ("subject_prep", "subject_detect", "cohort"), else the rule
    jobs: set[tuple[str, str | None]]
    record: dict[str, str]

    @property
    def subjects(self) -> set[str]:
        return {subject for _, subject in self.jobs if subject}


def submitted(text: str, cluster: slurm_cluster.SlurmCluster) -> list[SlurmJob]:
    """The SLURM jobs of one snakemake run, read from its output, its SLURM logs and scontrol."""
    records = cluster.jobs()
    jobs = []
    for job_id, log in re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$", text, re.M):
        # .../group_<group>_<rules...>/ or .../rule_<rule>/[<wildcards>/]
        folder = next(part for part in reversed(Path(log).parts) if part.startswith(("group_", "rule_")))
        kind = next((g for _, g in GROUPS if folder.startswith(f"group_{g}_")), folder.removeprefix("rule_"))
        ran = printed_jobs(Path(log).read_text()) if Path(log).exists() else set()
        jobs.append(SlurmJob(job_id, kind, ran, records.get(job_id, {})))
    return jobs


def run_id(text: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", text).group(1)


def check_went_through_sbatch(jobs: list[SlurmJob], text: str) -> None:
    """Every job is a batch job (sbatch) of this run on the test partition, with a GPU just where due."""
    name = run_id(text)
    for job in jobs:
        assert job.record, f"SLURM job {job.id} unknown to slurmctld"
        assert job.record["BatchFlag"] == "1" and job.record["JobName"] == name
        assert job.record["Partition"] == slurm_cluster.PARTITION
        asks_gpu = "gpu" in job.record.get("TresPerJob", "")
        assert asks_gpu == (job.kind == "subject_detect"), (job.kind, job.record.get("TresPerJob"))


def check_jobs_per_subject(jobs: list[SlurmJob]) -> None:
    """Each subject's jobs ran in one preparation and one detection SLURM job, each ran only its own kind of rule."""
    for job in jobs:
        if job.kind == "subject_prep":
            assert {rule for rule, _ in job.jobs} <= set(PREP_RULES), job
        elif job.kind == "subject_detect":
            assert {rule for rule, _ in job.jobs} <= set(DETECT_RULES), job
    for subject in {s for job in jobs for s in job.subjects}:
        kinds = sorted(job.kind for job in jobs if subject in job.subjects)
        assert kinds in (sorted(["subject_prep", "subject_detect"]), ["subject_detect"], ["subject_prep"]), \
            (subject, kinds)


def completed(jobs: list[SlurmJob]) -> bool:
    return all(job.record.get("JobState") == "COMPLETED" and job.record.get("ExitCode") == "0:0" for job in jobs)


def cohort_tables(out: Path, bids: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two cohort CSVs, with the input paths made relative to the dataset (runs use copies)."""
    summary = pd.read_csv(out / "group" / "cohort_summary.csv")
    summary["source"] = summary.source.str.replace(str(bids), "BIDS", regex=False)
    return summary, pd.read_csv(out / "group" / "cohort_detections.csv")


def check_same_results(out: Path, bids: Path, reference: tuple[Path, Path], subjects=("001", "002")) -> None:
    """Cohort tables equal to the local run's (for those subjects), detection tables byte for byte."""
    ref_bids, ref_out = reference
    summary, detections = cohort_tables(out, bids)
    ref_summary, ref_detections = cohort_tables(ref_out, ref_bids)
    labels = [f"sub-{s}" for s in subjects]
    pd.testing.assert_frame_equal(summary[summary.participant_id.isin(labels)].reset_index(drop=True), ref_summary)
    pd.testing.assert_frame_equal(
        detections[detections.participant_id.isin(labels)].reset_index(drop=True), ref_detections)
    for subject in subjects:
        for desc in ("candidates", "cmb"):
            name = f"sub-{subject}/anat/sub-{subject}_desc-{desc}_detections.tsv"
            assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name


def check_rerun_runs_only(subject: str, bids: Path, out: Path, cluster: slurm_cluster.SlurmCluster,
                          reference: tuple[Path, Path]) -> None:
    """A rerun plans and submits just this subject's two SLURM jobs and the cohort job, and ends equal to the local run."""
    plan = snakemake(bids, out, "--dry-run", cluster=cluster)
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert printed_jobs(plan.stdout) == subject_jobs(subject) | COHORT_JOBS
    result = snakemake(bids, out, cluster=cluster)
    assert result.returncode == 0, result.stdout[-4000:]
    jobs = submitted(result.stdout, cluster)
    check_went_through_sbatch(jobs, result.stdout)
    assert sorted((job.kind, tuple(job.subjects)) for job in jobs) == sorted([
        ("cohort", ()), ("subject_prep", (subject,)), ("subject_detect", (subject,))])
    check_same_results(out, bids, reference)


def copy_dataset(cohort: Path, dst: Path, subjects=("001", "002")) -> Path:
    """A copy of the simulated dataset with only these subjects."""
    def other_subjects(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if re.fullmatch(r"sub-\w+", n) and (Path(folder) / n).is_dir()
                and n.removeprefix("sub-") not in subjects]

    return Path(shutil.copytree(cohort, dst, ignore=other_subjects))


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_cluster.skip_reason()
    if reason:
        pytest.skip(reason)
    running = slurm_cluster.start_cluster()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three tiny subjects; sub-002 without phase (magnitude-only). sub-003 is the one added later."""
    return tiny_cohort(tmp_path_factory.mktemp("bids"), 3, without_phase="002")


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """sub-001 and sub-002 on one machine (profiles/local): what every cluster run must give."""
    root = tmp_path_factory.mktemp("local")
    bids, out = copy_dataset(cohort, root / "bids"), root / "out"
    result = snakemake(bids, out)
    assert result.returncode == 0, result.stdout[-3000:]
    return bids, out


@pytest.fixture(scope="module")
def cluster_run(cluster, cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    bids, out = copy_dataset(cohort, root / "bids"), root / "out"
    result = snakemake(bids, out, cluster=cluster)
    return bids, out, result


def test_cluster_run_matches_local_run(cluster, cluster_run, reference):
    bids, out, result = cluster_run
    assert result.returncode == 0, result.stdout[-4000:]
    jobs = submitted(result.stdout, cluster)
    check_went_through_sbatch(jobs, result.stdout)
    assert completed(jobs)
    # Every job ran in a SLURM job (none on this machine), and each subject took exactly two.
    assert set().union(*(job.jobs for job in jobs)) == (
        subject_jobs("001") | subject_jobs("002") | DATASET_JOBS)
    check_jobs_per_subject(jobs)
    assert sorted(job.kind for job in jobs) == sorted(
        ["subject_prep", "subject_detect"] * 2 + ["cohort", "dataset_description", "mars_atlas"])
    assert all(len(job.subjects) <= 1 for job in jobs)
    check_same_results(out, bids, reference)


def test_added_subject_runs_only_its_jobs(cluster, cluster_run, cohort, reference):
    bids, out, _ = cluster_run
    shutil.copytree(cohort / "sub-003", bids / "sub-003")
    check_rerun_runs_only("003", bids, out, cluster, reference)
    summary, _ = cohort_tables(out, bids)
    assert list(summary.participant_id) == ["sub-001", "sub-002", "sub-003"]


def test_broken_subject_keeps_others_going_then_reruns_only_itself(cluster, cohort, reference, tmp_path):
    bids, out = copy_dataset(cohort, tmp_path / "bids"), tmp_path / "out"
    broken = bids / "sub-002" / "anat" / "sub-002_part-mag_T2starw.nii.gz"
    original = broken.read_bytes()
    broken.write_bytes(gzip.compress(gzip.decompress(original)[:50_000]))  # a truncated transfer

    result = snakemake(bids, out, cluster=cluster)  # keep-going comes from the profile
    assert result.returncode != 0
    error = f"cmbflow error: sub-002: {broken}: not a readable NIfTI image"
    assert error in result.stdout
    jobs = submitted(result.stdout, cluster)
    check_went_through_sbatch(jobs, result.stdout)
    failed = [job for job in jobs if job.record["JobState"] == "FAILED"]
    # The failed job is sub-002's CPU job (twice: the profile's one retry); its log names the file.
    assert failed and all(job.kind == "subject_prep" and job.subjects == {"002"} for job in failed)
    assert all(error in Path(job.record["StdOut"]).read_text() for job in failed)
    assert completed([job for job in jobs if "002" not in job.subjects])
    assert {job.kind for job in jobs if job.subjects == {"001"}} == {"subject_prep", "subject_detect"}
    assert (out / "sub-001" / "anat" / "sub-001_desc-cmb_detections.tsv").exists()
    assert not (out / "group" / "cohort_summary.csv").exists()

    broken.write_bytes(original)
    check_rerun_runs_only("002", bids, out, cluster, reference)


def test_killed_snakemake_resumes_on_rerun(cluster, cohort, reference, tmp_path):
    """SIGKILL while jobs are queued; its SLURM jobs are cancelled, then a rerun completes.

    Both subjects go into one preparation and one detection SLURM job here (--group-components), as
    for a big cohort. The kill comes as soon as the detection job is submitted, so the preparation
    is done.
    """
    bids, out = copy_dataset(cohort, tmp_path / "bids"), tmp_path / "out"
    bundle = ["--group-components", "subject_prep=2", "subject_detect=2"]
    log = tmp_path / "killed.log"
    proc = snakemake(bids, out, *bundle, cluster=cluster, background=log)
    detect_submitted = re.compile(r"submitted with SLURM jobid \d+ \(log: .*/group_subject_detect_")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not detect_submitted.search(log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, f"snakemake ended before the detection job was submitted:\n{log.read_text()[-3000:]}"
    finally:
        proc.kill()  # SIGKILL: no chance to cancel its SLURM jobs or to remove its lock
        proc.wait()
    killed = log.read_text()
    jobs = submitted(killed, cluster)
    assert [job.kind for job in jobs if job.kind.startswith("subject")] == ["subject_prep", "subject_detect"]
    assert jobs[[job.kind for job in jobs].index("subject_prep")].subjects == {"001", "002"}  # one job, both

    # SLURM jobs outlive a killed snakemake. Left running, they would write the same files as
    # the rerun's jobs while it resubmits them, and hold the node's CPUs and GPU: cancel them.
    orphans = cluster.run("squeue", "--noheader", "--format=%i", "--name", run_id(killed)).stdout.split()
    assert orphans, "no job was left running: the kill came too late to test anything"
    cluster.run("scancel", "--name", run_id(killed))
    deadline = time.monotonic() + 60
    while cluster.run("squeue", "--noheader", "--name", run_id(killed)).stdout.strip():
        assert time.monotonic() < deadline, "cancelled jobs did not end"
        time.sleep(1)
    # The killed snakemake left its lock: a rerun says so, and --unlock removes it.
    locked = snakemake(bids, out, *bundle, cluster=cluster)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stdout
    assert snakemake(bids, out, "--unlock", cluster=cluster).returncode == 0

    plan = printed_jobs(snakemake(bids, out, *bundle, "--dry-run", cluster=cluster).stdout)
    detect_stage = {(rule, subject) for subject in ("001", "002") for rule in DETECT_RULES}
    assert detect_stage | COHORT_JOBS <= plan <= detect_stage | DATASET_JOBS
    result = snakemake(bids, out, *bundle, cluster=cluster)
    assert result.returncode == 0, result.stdout[-4000:]
    jobs = submitted(result.stdout, cluster)
    check_went_through_sbatch(jobs, result.stdout)
    assert completed(jobs)
    assert [(job.kind, job.subjects) for job in jobs if job.kind.startswith("subject")] == [
        ("subject_detect", {"001", "002"})]
    check_same_results(out, bids, reference)


def test_added_session_reruns_only_its_subject_and_the_longitudinal_steps(cluster, tmp_path):
    """One subject with two sessions, then a third one: only that session's two SLURM jobs, the
    subject's longitudinal job and the cohort's run. The first two sessions run locally (the
    cluster runs of whole datasets are the tests above), so the SLURM part is the added session."""
    simulate_cohort(tmp_path / "all", 1, seed=12, preset="tiny", sessions=3)
    bids = Path(shutil.copytree(tmp_path / "all", tmp_path / "bids", ignore=shutil.ignore_patterns("ses-03")))
    out = tmp_path / "out"
    result = snakemake(bids, out)
    assert result.returncode == 0, result.stdout[-4000:]

    shutil.copytree(tmp_path / "all" / "sub-001" / "ses-03", bids / "sub-001" / "ses-03")
    plan = snakemake(bids, out, "--dry-run", cluster=cluster)
    assert plan.returncode == 0, plan.stdout[-3000:]
    session_jobs = {(rule, "001") for rule in PREP_RULES + DETECT_RULES}
    assert printed_jobs(plan.stdout) == session_jobs | COHORT_JOBS | {
        ("longitudinal", "001"), ("cohort_longitudinal", None)}
    result = snakemake(bids, out, cluster=cluster)
    assert result.returncode == 0, result.stdout[-4000:]
    jobs = submitted(result.stdout, cluster)
    check_went_through_sbatch(jobs, result.stdout)
    assert completed(jobs)
    assert sorted(job.kind for job in jobs) == sorted(
        ["subject_prep", "subject_detect", "longitudinal", "cohort_longitudinal", "cohort"])
    assert all("session=03" in printed for job in jobs if job.kind.startswith("subject")
               for printed in [Path(job.record["StdOut"]).read_text()])
    table = pd.read_csv(out / "group" / "cohort_longitudinal.csv", dtype={"session": str})
    assert table[["participant_id", "session", "status"]].values.tolist() == [
        ["sub-001", "ses-02", "ok"], ["sub-001", "ses-03", "ok"]]

