"""Per-stage wall time and peak memory for one 200x244x72 subject at 0.9x0.9x1.8 mm (CPU).

    python benchmarks/bench_subject.py [--threads 2] [--device cpu] [--shape 300 366 108 --stages-only]

``--shape`` zero-pads (or crops) the simulated subject to another grid: the memory of each stage
against the voxel count (cmbflow.memory's figures come from two such runs).

Each stage runs in a fresh process (as a Snakemake job would), so peak RSS is the stage's own;
wall time is measured around the library call (without interpreter start-up), and the whole
workflow is then timed end to end with Snakemake. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (200, 244, 72)
VOXEL = (0.9, 0.9, 1.8)

# Each stage as (name, python statement run after `from cmbflow import detections, stages`); {d} is the work dir.
STAGES = [
    ("anatomy (N4, brain mask, affine registration)", "stages.prepare_anatomy('{d}/bids/sub-001/anat/sub-001_part-mag_T2starw.nii.gz', None, 'last', '{d}/n4.nii.gz', '{d}/n4.json', '{d}/mask.nii.gz', '{d}/mask.json', '{d}/xfm/x.mat', '{d}/xfm/x.json', '{d}/warped.nii.gz', '{d}/warped.json', 'sub-001')"),
    ("phase_preproc", "stages.preprocess_phase('{d}/n4.nii.gz', '{d}/bids/sub-001/anat/sub-001_part-phase_T2starw.nii.gz', '{d}/mask.nii.gz', 'last', '{d}/hp.nii.gz', '{d}/hp.json', '{d}/swi.nii.gz', '{d}/swi.json', PhaseConfig(), 'sub-001')"),
    ("mars_atlas (once per run)", "write_mars_atlas('{d}/atlas.nii.gz', '{d}/atlas.tsv')"),
    ("detect (candidates, CNN on every candidate; MNI position, MARS region)", "stages.detect_microbleeds('{d}/n4.nii.gz', '{d}/mask.nii.gz', '{d}/hp.nii.gz', '{d}/xfm/x.mat', '{d}/atlas.nii.gz', '{d}/cand.tsv', '{d}/cand.json', '{d}/cmb.tsv', '{d}/cmb.json', CandidateParams(), ClassifierConfig(), -1, '{device}', 'sub-001')"),
]

# Peak RSS from VmHWM: unlike getrusage's ru_maxrss, it is not inherited from the parent.
RUNNER = """
import re, sys, time
from cmbflow import detections, stages
from cmbflow.config import CandidateParams, ClassifierConfig, PhaseConfig
from cmbflow.mars import write_mars_atlas
import torch
torch.set_num_threads({threads})
start = time.perf_counter()
{statement}
wall = time.perf_counter() - start
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(wall, peak_kb / 1024)
"""

FRST_RUNNER = """
import time, numpy as np, nibabel as nib, torch
from cmbflow.frst import frst3d
from cmbflow.config import CandidateParams
torch.set_num_threads({threads})
img = nib.load('{d}/swi.nii.gz'); mask = nib.load('{d}/mask.nii.gz').get_fdata() > 0
p = CandidateParams()
data = img.get_fdata(dtype=np.float32)
frst3d(data, img.header.get_zooms()[:3], p.frst_radii_mm, mask=mask, device='{device}')  # warm-up
times = []
for _ in range(3):
    start = time.perf_counter()
    frst3d(data, img.header.get_zooms()[:3], p.frst_radii_mm, mask=mask, device='{device}')
    times.append(time.perf_counter() - start)
print(min(times))
"""


def simulate(out: Path, shape: tuple[int, int, int]) -> None:
    """One standard-preset subject on exactly the benchmark grid (RAS, 0.9x0.9x1.8 mm)."""
    from cmbflow.simulate import sample_subject_params, simulate_subject
    from cmbflow.simulate.bids import write_subject

    rng = np.random.default_rng([2026, 1])
    params = dataclasses.replace(sample_subject_params(rng, "standard"), voxel_size_mm=VOXEL, orientation="RAS")
    subject = simulate_subject(params, rng)
    subject = _fit_grid(subject, shape)
    write_subject(out, "sub-001", subject)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))


def _fit_grid(subject, shape: tuple[int, int, int]):
    """Crop or pad (centred) the simulated arrays to ``shape``, shifting the affine to match."""
    start = [(s - t) // 2 for s, t in zip(subject.magnitude.shape, shape)]

    def fit(a):
        if a is None:
            return None
        out = np.zeros(shape, dtype=a.dtype)
        src = tuple(slice(max(o, 0), max(o, 0) + min(t, s - max(o, 0))) for o, s, t in zip(start, a.shape, shape))
        dst = tuple(slice(max(-o, 0), max(-o, 0) + (sl.stop - sl.start)) for o, sl in zip(start, src))
        out[dst] = a[src]
        return out

    affine = subject.affine.copy()
    affine[:3, 3] = subject.affine[:3, :3] @ np.asarray(start, dtype=float) + subject.affine[:3, 3]
    lesions = subject.lesions.copy()
    lesions[["i", "j", "k"]] -= start
    return dataclasses.replace(subject, magnitude=fit(subject.magnitude), phase=fit(subject.phase),
                               brain_mask=fit(subject.brain_mask), affine=affine, lesions=lesions)


def run_stage(statement: str, threads: int) -> tuple[float, float]:
    env = os.environ | {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", RUNNER.format(threads=threads, statement=statement)],
                            capture_output=True, text=True, env=env, check=True)
    wall, rss = result.stdout.split()[-2:]
    return float(wall), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, help="grid of the simulated subject")
    parser.add_argument("--stages-only", action="store_true", help="skip the FRST and end-to-end timings")
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(prefix="cmbflow_bench_") as tmp:
        d = Path(tmp)
        start = time.perf_counter()
        simulate(d / "bids", shape)
        print(f"simulated 1 subject {shape} ({np.prod(shape) / 1e6:.2f} M voxels) at {VOXEL} mm in {time.perf_counter() - start:.1f} s\n")
        print("| stage | wall (s) | peak RSS (MB) |\n|---|---|---|")
        total = 0.0
        for name, statement in STAGES:
            wall, rss = run_stage(statement.format(d=d, device=args.device), args.threads)
            total += wall
            print(f"| {name} | {wall:.2f} | {rss:.0f} |")
        print(f"| **sum of stages** | **{total:.1f}** | |")
        if args.stages_only:
            return
        frst = subprocess.run([sys.executable, "-c", FRST_RUNNER.format(d=d, threads=args.threads, device=args.device)],
                              capture_output=True, text=True, check=True)
        print(f"\nFRST alone ({args.device}, {args.threads} threads, best of 3): {float(frst.stdout.split()[-1]):.2f} s")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(d),
                        "--cores", str(args.threads), "--quiet", "--config", f"bids_dir={d / 'bids'}",
                        f"output_dir={d / 'out'}", f"device={args.device}"], check=True, capture_output=True)
        print(f"workflow end to end (snakemake --cores {args.threads}, start-up included): "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
