"""What one subject and a cohort cost, against a previous version of cmbflow (``make bench``).

    python benchmarks/bench_throughput.py [--subjects 20] [--seed 5000] [--preset diverse]
                                          [--cores 2] [--previous REF]

Simulates one cohort, then

1. runs its first subject end to end with this checkout and prints, per rule, wall time and CPU
   time (Snakemake's benchmark files) and start-up: importing what the rule's script imports, in
   a fresh interpreter (median of 3);
2. runs the whole cohort (``snakemake --cores N``) with this checkout and with the commit REF
   (checked out in a git worktree; each runs its own workflow and library), and prints the wall
   time, subjects per hour and their ratio, and whether the final calls are the same.

Each run starts from an empty output folder. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
_IMPORT_LINE = re.compile(r"^(?:from \S+ import .+|import .+)$", re.MULTILINE)


def snakemake(workflow: Path, bids: Path, out: Path, cores: int, *extra: str) -> float:
    """Run a checkout's workflow on a dataset; return the wall time in seconds."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"), "--directory", str(out),
           "--cores", str(cores), "--quiet", "all", "--config", f"bids_dir={bids}", f"output_dir={out}", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=workflow)
    return time.perf_counter() - start


def startup_s(script: Path) -> float:
    """Median time for a fresh interpreter to import what a workflow script imports."""
    code = "\n".join(_IMPORT_LINE.findall(script.read_text()))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=script.parent)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rule_scripts() -> dict[str, Path]:
    scripts = {}
    for smk in (REPO / "rules").glob("*.smk"):
        for rule, script in re.findall(r"^rule (\w+):\n.*?script:\s*\"\.\./(workflow_scripts/\w+\.py)\"",
                                       smk.read_text(), re.MULTILINE | re.DOTALL):
            scripts[rule] = REPO / script
    return scripts


def per_rule(out: Path) -> pd.DataFrame:
    """Wall and CPU time of every job, from Snakemake's benchmark files (benchmarks/<rule>/...)."""
    rows = [{"rule": path.relative_to(out / "benchmarks").parts[0], **pd.read_csv(path, sep="\t").iloc[0]}
            for path in sorted((out / "benchmarks").rglob("*.tsv"))]
    return pd.DataFrame(rows)


def calls(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "group" / "cohort_detections.csv")
    return table[["participant_id", "x", "y", "z", "probability"]].sort_values(["participant_id", "x", "y", "z"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--preset", default="diverse")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--previous", required=True, help="git commit or tag to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmbflow_bench_") as tmp:
        d = Path(tmp)
        subprocess.run([sys.executable, "-m", "cmbflow.cli", "simulate", str(d / "bids"), "--subjects",
                        str(args.subjects), "--seed", str(args.seed), "--preset", args.preset],
                       check=True, capture_output=True)
        one = d / "one"
        wall = snakemake(REPO, d / "bids", one, args.cores, "participant_label=001")
        jobs = per_rule(one)
        scripts = rule_scripts()
        print(f"## One subject (sub-001 of {args.preset} seed {args.seed}), --cores {args.cores}: {wall:.1f} s wall\n")
        print("| rule | wall (s) | CPU (s) | start-up (s) |\n|---|---|---|---|")
        for rule, job in jobs.groupby("rule", sort=False):
            start = f"{startup_s(scripts[rule]):.2f}" if rule in scripts else "n/a"
            print(f"| {rule} | {job['s'].sum():.1f} | {job['cpu_time'].sum():.1f} | {start} |")
        print(f"| **all jobs** | **{jobs['s'].sum():.1f}** | **{jobs['cpu_time'].sum():.1f}** | |\n")

        previous = d / "previous"
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
        same = len(before) == len(now) and (before.to_numpy() == now.to_numpy()).all()
        print(f"Final calls: {len(before)} before, {len(now)} now; "
              f"{'identical' if same else 'DIFFERENT (see the two cohort_detections.csv)'}")


if __name__ == "__main__":
    main()
