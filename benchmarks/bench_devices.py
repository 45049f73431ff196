"""FRST, stage 1 and stage 2 of one subject on each device (CPU, CUDA), from its workflow outputs.

    python benchmarks/bench_devices.py ANAT_DIR [--stage1-dir DIR] [--device cpu cuda] [--repeats 3] [--threads T]

ANAT_DIR is one subject's output folder from a run with ``--notemp`` (``cmbflow BIDS OUT
participant --until candidates --notemp`` is enough): its bias-corrected magnitude, brain mask
and, if the subject has phase, high-pass phase. The stage-1 table is an intermediate file, in the
same subject's folder under the work folder (``--stage1-dir``, default OUT/work/sub-X/anat). Times, per device: the FRST alone,
the whole of stage 1 (``find_candidates``), classification of the subject's candidates by the
shipped model, the mirror measures of stage 2 (CPU only), and one training epoch on those patches (arbitrary labels: this times the
optimiser, not the model). Patch extraction runs on the CPU whatever the device. Each figure is the
median of ``--repeats`` runs after one untimed warm-up; on CUDA the peak GPU memory is given too.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cmbflow.candidates import find_candidates
from cmbflow.config import CandidateParams, TrainParams
from cmbflow.derivatives import MNI_XFM
from cmbflow.frst import frst3d
from cmbflow.image import voxel_sizes
from cmbflow.model import load_classifier
from cmbflow.patches import add_mirror_measures, candidate_features, candidate_patches
from cmbflow.training import train_classifier
from cmbflow.transforms import Transforms, points_to_mni


def median_seconds(run: Callable[[], object], repeats: int, device: str) -> tuple[float, float | None]:
    """Median wall time of ``run`` over ``repeats`` calls after a warm-up, and peak CUDA memory (MB)."""
    run()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e6 if device == "cuda" else None
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("anat_dir", type=Path)
    parser.add_argument("--stage1-dir", type=Path, help="where the stage-1 table is (default: under OUT/work)")
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"], default=["cpu"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    anat = args.anat_dir.resolve()  # OUT/sub-X[/ses-Y]/anat -> OUT/work/sub-X[/ses-Y]/anat
    subject_root = next(p for p in anat.parents if p.name.startswith("sub-"))
    stage1_dir = args.stage1_dir or subject_root.parent / "work" / anat.relative_to(subject_root.parent)
    [stage1] = sorted(stage1_dir.glob("*_desc-stage1_detections.tsv"))
    prefix = stage1.name.removesuffix("_desc-stage1_detections.tsv")
    image = nib.load(args.anat_dir / f"{prefix}_part-mag_desc-n4_T2starw.nii.gz")
    magnitude = image.get_fdata(dtype=np.float32)
    mask = np.asanyarray(nib.load(args.anat_dir / f"{prefix}_desc-brain_mask.nii.gz").dataobj) > 0
    hp_path = args.anat_dir / f"{prefix}_part-phase_desc-hpphase_T2starw.nii.gz"
    hp_phase = nib.load(hp_path).get_fdata(dtype=np.float32) if hp_path.exists() else None
    table = pd.read_csv(stage1, sep="\t")
    params = CandidateParams()
    sizes = voxel_sizes(image.affine)
    print(f"{prefix}: {magnitude.shape} at {np.round(sizes, 2).tolist()} mm, {len(table)} stage-1 candidates, "
          f"{'with' if hp_phase is not None else 'without'} phase")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} CPU cores")

    classifier = load_classifier(None, has_phase=hp_phase is not None)
    patches = candidate_patches(magnitude, mask, image.affine, table[["x", "y", "z"]].to_numpy(float), hp_phase,
                                context_mm=classifier.model.spec.context_mm)
    xfm = Transforms(args.anat_dir.parent / "xfm" / f"{prefix}{MNI_XFM}")
    table[["mni_x", "mni_y", "mni_z"]] = points_to_mni(table[["x", "y", "z"]].to_numpy(float), xfm)
    add_mirror_measures(table, magnitude, mask, image.affine, xfm, params)
    features = candidate_features(table, with_phase=hp_phase is not None)
    labels = (np.arange(len(table)) % 5 == 0).astype(np.int8)
    n = len(table)
    devices = [d for d in args.device if d == "cpu" or torch.cuda.is_available()]
    if devices != args.device:
        print("cuda: not available, skipped")
    names = {"cpu": "cpu", "cuda": torch.cuda.get_device_name(0) if "cuda" in devices else ""}
    rows = []
    for device in devices:
        label = names[device]
        steps: list[tuple[str, Callable[[], object], str]] = [
            ("FRST (5 radii)", lambda: frst3d(magnitude, sizes, params.frst_radii_mm, mask=mask, device=device), "-"),
            ("stage 1 (find_candidates)", lambda: find_candidates(image, mask, hp_phase, params, device), "-"),
            (f"classification ({classifier.variant} model)", lambda: classifier.predict(patches, features, device),
             "candidates"),
        ] + ([("mirror measures (add_mirror_measures)",
               lambda: add_mirror_measures(table, magnitude, mask, image.affine, xfm, params), "candidates")]
             if device == "cpu" else [])
        for step, run, unit in steps:
            seconds, peak = median_seconds(run, args.repeats, device)
            rate = f"{n / seconds:,.0f}" if unit == "candidates" else "-"
            rows.append((step, label, seconds, rate, peak))
    for device in devices:  # last: training switches torch to deterministic kernels
        _, history = train_classifier(patches, features, labels, TrainParams(epochs=2), device)
        rows.append(("training epoch (second of 2)", names[device], history[-1]["seconds"],
                     f"{history[-1]['examples'] / history[-1]['seconds']:,.0f}", None))
    print(f"\nmedian of {args.repeats} runs after a warm-up; rate = candidates (training: examples) per second\n")
    print("| step | device | median s | per s | peak GPU MB |\n|---|---|---|---|---|")
    for step, device, seconds, rate, peak in rows:
        print(f"| {step} | {device} | {seconds:.3f} | {rate} | {'-' if peak is None else f'{peak:,.0f}'} |")


if __name__ == "__main__":
    main()
