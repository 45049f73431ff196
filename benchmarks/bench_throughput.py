"""What one subject and a cohort cost, against a previous version of cmbflow (``make bench``).

    python benchmarks/bench_throughput.py [--subjects 20] [--seed 5000] [--preset diverse]
                                          [--cores 2] [--previous REF]

Simulates one cohort, then

1. runs its first subject end to end with this checkout and prints, per rule, wall time and CPU
   time (Snakemake's benchmark files) and start-up: the job's wall time less the time its step
   function ran (logged by cmbflow.step), i.e. Python, the imports and Snakemake's preamble;
2. runs the whole cohort (``snakemake --cores N``) with this checkout and with the commit REF
   (checked out in a git worktree; each runs its own workflow and library), and prints the wall
   time, subjects per hour and their ratio, and whether the final calls are the same.

Each run starts from an empty output folder. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
_RAN_IN = re.compile(r" ran in ([\d.]+) s$", re.MULTILINE)


def snakemake(workflow: Path, bids: Path, out: Path, cores: int, *extra: str) -> float:
    """Run a checkout's workflow on a dataset; return the wall time in seconds."""
    cmd = [sys.executable, "-m", "snakemake", "all", "--snakefile", str(workflow / "Snakefile"), "--directory",
           str(out), "--cores", str(cores), "--config", f"bids_dir={bids}", f"output_dir={out}", *extra]
    env = os.environ | {"PYTHONPATH": str(workflow / "src")}  # each checkout's jobs import its own library
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workflow, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def per_rule(out: Path) -> pd.DataFrame:
    """Wall time, CPU time and start-up of every job, from Snakemake's benchmark files
    (benchmarks/<rule>/<subject>.tsv, benchmarks/<rule>.tsv once per run) and the jobs' logs."""
    rows = []
    for path in sorted((out / "benchmarks").rglob("*.tsv")):
        name = path.relative_to(out / "benchmarks")
        rule = name.parts[0] if len(name.parts) > 1 else path.stem
        log = out / "logs" / name.with_suffix(".log")
        ran = _RAN_IN.search(log.read_text()) if log.exists() else None
        job = pd.read_csv(path, sep="\t").iloc[0]
        rows.append({"rule": rule, "per_subject": len(name.parts) > 1, "s": job["s"], "cpu_time": job["cpu_time"],
                     "startup": job["s"] - float(ran.group(1)) if ran else float("nan")})
    return pd.DataFrame(rows)


def calls(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "group" / "cohort_detections.csv")
    return table[["participant_id", "x", "y", "z", "probability"]].sort_values(["participant_id", "x", "y", "z"])


SAME_MM = 0.5


def same_calls(before: pd.DataFrame, now: pd.DataFrame) -> tuple[int, float]:
    """How many calls of ``before`` have a call of ``now`` within SAME_MM in the same subject, and
    the largest probability change among those pairs (positions move by hundredths of a mm when
    N4 or the registration changes)."""
    same, drift = 0, 0.0
    for subject, old in before.groupby("participant_id"):
        new = now[now["participant_id"] == subject]
        if new.empty:
            continue
        distance, nearest = cKDTree(new[["x", "y", "z"]].to_numpy()).query(old[["x", "y", "z"]].to_numpy())
        close = distance <= SAME_MM
        same += int(close.sum())
        change = np.abs(old["probability"].to_numpy()[close] - new["probability"].to_numpy()[nearest[close]])
        drift = max(drift, float(change.max(initial=0.0)))
    return same, drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--preset", default="diverse")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--previous", required=True, help="git commit or tag to compare with")
    parser.add_argument("--bids", type=Path, help="an already simulated cohort (same subjects, seed, preset)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmbflow_bench_") as tmp:
        d = Path(tmp)
        if args.bids:
            (d / "bids").symlink_to(args.bids.resolve())
        else:
            subprocess.run([sys.executable, "-m", "cmbflow.cli", "simulate", str(d / "bids"), "--subjects",
                            str(args.subjects), "--seed", str(args.seed), "--preset", args.preset],
                           check=True, capture_output=True)
        one = d / "one"
        wall = snakemake(REPO, d / "bids", one, args.cores, "participant_label=sub-001")  # "001" would be read as the number 1
        jobs = per_rule(one).sort_values("per_subject", ascending=False, kind="stable")
        print(f"## One subject (sub-001 of {args.preset} seed {args.seed}), --cores {args.cores}: {wall:.1f} s wall\n")
        print("| rule | wall (s) | CPU (s) | start-up (s) |\n|---|---|---|---|")
        for _, job in jobs.iterrows():
            once = "" if job["per_subject"] else " (once per run)"
            print(f"| {job['rule']}{once} | {job['s']:.1f} | {job['cpu_time']:.1f} | {job['startup']:.2f} |")
        mine = jobs[jobs["per_subject"]]
        print(f"| **the subject's jobs** | **{mine['s'].sum():.1f}** | **{mine['cpu_time'].sum():.1f}** | "
              f"**{mine['startup'].sum():.1f}** |\n")

        previous = d / "previous_checkout"  # its outputs go to d / "previous", outside the checkout
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(previous), args.previous],
                       check=True, capture_output=True)
        try:
            figures = {name: snakemake(workflow, d / "bids", d / name, args.cores)
                       for name, workflow in (("previous", previous), ("now", REPO))}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(previous)], check=True)
        print(f"## Cohort: {args.subjects} subjects ({args.preset}, seed {args.seed}), --cores {args.cores}\n")
        print("| version | wall | s per subject | subjects per hour |\n|---|---|---|---|")
        for name, label in (("previous", args.previous), ("now", "this checkout")):
            seconds = figures[name]
            print(f"| {label} | {seconds:.0f} s | {seconds / args.subjects:.1f} | {3600 * args.subjects / seconds:.0f} |")
        print(f"\nSpeed-up: {figures['previous'] / figures['now']:.2f}x")
        before, now = calls(d / "previous"), calls(d / "now")
        same, drift = same_calls(before, now)
        print(f"Final calls: {len(before)} before, {len(now)} now, {same} within {SAME_MM} mm of each other; "
              f"largest change in probability among those: {drift:.2g}")


if __name__ == "__main__":
    main()
