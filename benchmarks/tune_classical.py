"""Tune and evaluate the candidate generator and the rule-based detector on simulated subjects.

Simulates (once, cached under ``--work``) a tuning cohort and a held-out cohort, runs a simple
preprocessing (true brain mask; phase unwrapped and high-passed with :mod:`cmbflow.phase`;
candidates found on the magnitude, or with ``--image swi`` on the SWI), and prints:

* candidate recall and candidates per scan;
* feature quantiles of candidates that are / are not true microbleeds (to read cut-offs from);
* a coordinate search over the rules' cut-offs on the tuning cohort (most sensitivity at
  <= ``--max-fp`` false positives per scan);
* the held-out cohort's figures with the library defaults and with the searched cut-offs.

Usage: python benchmarks/tune_classical.py --work /tmp/cmbflow-tune [--n-tune 8 --n-test 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmbflow.candidates import CandidateParams, find_candidates
from cmbflow.classical import ClassicalParams, call_microbleeds, score_candidates
from cmbflow.evaluate import detection_metrics, froc, match_detections
from cmbflow.image import load_image, voxel_sizes
from cmbflow.phase import highpass, swi, unwrap
from cmbflow.simulate import simulate_cohort

#: One scan: subject label, candidate table, truth table, voxel size (mm).
Scan = tuple[str, pd.DataFrame, pd.DataFrame, np.ndarray]

FEATURES = ["radius_mm", "contrast", "roundness", "elongation", "frst", "phase_dipole", "edge_distance_mm"]

#: Cut-offs the coordinate search may move, with the values it tries.
SEARCH: dict[str, list[float]] = {
    "min_contrast": [0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75],
    "min_roundness": [0.25, 0.3, 0.35, 0.4, 0.45, 0.5],
    "max_elongation": [1.6, 1.8, 2.0, 2.3, 2.6],
    "min_frst": [0.0, 0.005, 0.01, 0.015, 0.02, 0.03],
    "min_phase_dipole": [-0.05, 0.0, 0.05, 0.1, 0.2, 0.3],
    "min_edge_distance_mm": [0.0, 1.0, 2.0, 3.0, 5.0],
    "min_diameter_mm": [1.0, 1.5, 2.0, 2.5, 3.0],
    "max_diameter_mm": [8.0, 10.0, 12.0],
}


def simulated(work: Path, seed: int, n: int) -> Path:
    """The cohort of ``n`` standard subjects for ``seed``, simulated on first use."""
    root = work / f"standard-seed{seed}-n{n}"
    if not (root / "dataset_description.json").exists():
        simulate_cohort(root, n_subjects=n, seed=seed, preset="standard")
    return root


def subject_candidates(
    root: Path, subject: str, cache: Path, image_kind: str
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Candidates (cached TSV), the truth table and the voxel size of one simulated subject."""
    anat = root / subject / "anat"
    deriv = root / "derivatives" / "simulation" / subject / "anat"
    truth = pd.read_csv(deriv / f"{subject}_desc-truth_lesions.tsv", sep="\t")
    mag = load_image(anat / f"{subject}_part-mag_T2starw.nii.gz", subject=subject)
    sizes = voxel_sizes(mag.affine)
    out = cache / f"{subject}_image-{image_kind}_candidates.tsv"
    if out.exists():
        return pd.read_csv(out, sep="\t"), truth, sizes
    mask = load_image(deriv / f"{subject}_desc-brain_mask.nii.gz", subject=subject).get_fdata() > 0.5
    phase = load_image(anat / f"{subject}_part-phase_T2starw.nii.gz", subject=subject).get_fdata(dtype=np.float32)
    hp = highpass(unwrap(phase, mask), mask, sizes)
    if image_kind == "swi":
        mag = nib.Nifti1Image(swi(mag.get_fdata(dtype=np.float32), hp), mag.affine)
    table = find_candidates(mag, mask, hp, CandidateParams(), device="cpu")
    cache.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    return table, truth, sizes


def cohort_candidates(root: Path, cache: Path, image_kind: str) -> list[Scan]:
    subjects = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    scans = []
    for subject in subjects:
        start = time.perf_counter()
        table, truth, sizes = subject_candidates(root, subject, cache, image_kind)
        scans.append((subject, table, truth, sizes))
        print(f"  {subject}: {len(table)} candidates, {int((truth['kind'] == 'cmb').sum())} bleeds "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return scans


def bleeds(truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    cmb = truth[truth["kind"] == "cmb"]
    return cmb[["x", "y", "z"]].to_numpy(float), cmb["diameter_mm"].to_numpy(float) / 2.0


def label_candidates(scans: list[Scan]) -> pd.DataFrame:
    """All candidates of a cohort with a column ``is_bleed`` (matched one to one to a true bleed)."""
    rows = []
    for subject, table, truth, sizes in scans:
        xyz, radius = bleeds(truth)
        match = match_detections(table[["x", "y", "z"]].to_numpy(float), xyz, radius, sizes)
        labelled = table.assign(subject=subject, is_bleed=False)
        labelled.loc[labelled.index[match.pairs[:, 0]], "is_bleed"] = True
        rows.append(labelled)
    return pd.concat(rows, ignore_index=True)


def evaluate(scans: list[Scan], params: ClassicalParams) -> tuple[dict[str, float], dict[float, float]]:
    matches, probs, dets, truths, radii, voxel = [], [], [], [], [], []
    for _, table, truth, sizes in scans:
        xyz, radius = bleeds(truth)
        calls = call_microbleeds(table, params).to_numpy()
        points = table[["x", "y", "z"]].to_numpy(float)
        matches.append(match_detections(points[calls], xyz, radius, sizes))
        probs.append(score_candidates(table, params).to_numpy())
        dets.append(points)
        truths.append(xyz)
        radii.append(radius)
        voxel.append(sizes)
    return detection_metrics(matches), froc(probs, dets, truths, radii, voxel)


def candidate_recall(scans: list[Scan]) -> float:
    found = total = 0
    for _, table, truth, sizes in scans:
        xyz, radius = bleeds(truth)
        match = match_detections(table[["x", "y", "z"]].to_numpy(float), xyz, radius, sizes)
        found += match.true_positives
        total += len(xyz)
    return found / total if total else float("nan")


def report(name: str, scans: list[Scan], params: ClassicalParams) -> None:
    metrics, curve = evaluate(scans, params)
    per_scan = [len(t) for _, t, _, _ in scans]
    print(f"{name}: {len(scans)} scans, {int(metrics['lesions'])} bleeds; candidate recall "
          f"{candidate_recall(scans):.3f}, candidates/scan median {np.median(per_scan):.0f} (max {max(per_scan)})")
    print(f"  sensitivity {metrics['sensitivity']:.3f}  precision {metrics['precision']:.3f}  "
          f"F1 {metrics['f1']:.3f}  FP/scan {metrics['fp_per_scan']:.2f}")
    print("  FROC sensitivity at FP/scan " + "  ".join(f"{k:g}: {v:.3f}" for k, v in curve.items()))


def search(scans: list[Scan], start: ClassicalParams, max_fp: float, rounds: int = 2) -> ClassicalParams:
    """Coordinate search: most sensitivity at <= max_fp FP/scan, then fewest FP, then defaults."""

    def objective(params: ClassicalParams) -> tuple[float, float]:
        m, _ = evaluate(scans, params)
        feasible = m["fp_per_scan"] <= max_fp
        return (m["sensitivity"] if feasible else -m["fp_per_scan"], -m["fp_per_scan"])

    best, best_score = start, objective(start)
    for _ in range(rounds):
        for field, values in SEARCH.items():
            for value in values:
                trial = best.model_copy(update={field: value})
                score = objective(trial)
                if score > best_score:
                    best, best_score = trial, score
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for simulated data and caches")
    parser.add_argument("--tune-seed", type=int, default=100)
    parser.add_argument("--n-tune", type=int, default=8)
    parser.add_argument("--test-seed", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--max-fp", type=float, default=1.0, help="FP/scan budget of the search")
    parser.add_argument("--image", choices=("mag", "swi"), default="mag",
                        help="image the candidates are found on (phase is always used for the dipole)")
    args = parser.parse_args()

    sets = {}
    for name, seed, n in (("tune", args.tune_seed, args.n_tune), ("test", args.test_seed, args.n_test)):
        print(f"{name} cohort: seed {seed}, {n} standard subjects", flush=True)
        root = simulated(args.work, seed, n)
        sets[name] = cohort_candidates(root, args.work / "candidates" / root.name, args.image)

    labelled = label_candidates(sets["tune"])
    pd.set_option("display.width", 160)
    quantiles = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
    for is_bleed, group in labelled.groupby("is_bleed"):
        print(f"\ntuning candidates that are {'' if is_bleed else 'not '}bleeds ({len(group)}), feature quantiles:")
        print(group[FEATURES].quantile(quantiles).round(3).to_string())
    print()
    defaults = ClassicalParams()
    report("tune, defaults", sets["tune"], defaults)
    tuned = search(sets["tune"], defaults, args.max_fp)
    changed = {k: v for k, v in tuned.model_dump().items() if v != getattr(defaults, k)}
    print(f"search (<= {args.max_fp} FP/scan on the tuning cohort) moved: {changed or 'nothing'}")
    report("tune, searched", sets["tune"], tuned)
    print()
    report("held-out, defaults", sets["test"], defaults)
    report("held-out, searched", sets["test"], tuned)


if __name__ == "__main__":
    main()
