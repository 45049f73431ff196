"""The anatomy step's accuracy and time on simulated subjects: N4, template brain mask, MNI registration.

    python benchmarks/bench_registration.py [--subjects 10] [--seed 1800] [--preset diverse] [--bids DIR]
                                            [--snr LOW HIGH]

For each subject: N4, then the template brain mask and the subject's MNI transform from one
registration (``cmbflow.anat.brain_mask_and_registration``). Prints, per subject and on average,
the mask's Dice against the simulator's brain, the mean distance between the true microbleeds
mapped to MNI and the simulator's MNI positions, region accuracy (how often the MARS region there
equals the one at the truth), the registration similarity, and the time of N4 and of mask +
registration. To compare two versions, run it with each on ``PYTHONPATH`` and the same ``--bids``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmbflow import anat
from cmbflow.mars import mars_atlas
from cmbflow.simulate.bids import TRUTH_DIR, simulate_cohort, write_subject
from cmbflow.simulate.params import sample_subject_params
from cmbflow.simulate.subject import simulate_subject
from cmbflow.transforms import points_to_mni


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def measure(bids: Path, label: str, atlas, tmp: Path) -> dict:
    mag = nib.load(bids / label / "anat" / f"{label}_part-mag_T2starw.nii.gz")
    truth_dir = bids / TRUTH_DIR / label / "anat"
    truth_mask = np.asarray(nib.load(truth_dir / f"{label}_desc-brain_mask.nii.gz").dataobj) > 0
    truth = pd.read_csv(truth_dir / f"{label}_desc-truth_lesions.tsv", sep="\t")
    truth = truth[truth["kind"] == "cmb"] if "kind" in truth else truth
    start = time.perf_counter()
    n4 = anat.n4_bias_correct(mag)
    n4_s = time.perf_counter() - start
    start = time.perf_counter()
    mask, registration = anat.brain_mask_and_registration(n4, None, tmp / label / "reg_")
    registration_s = time.perf_counter() - start
    true_mni = truth[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
    mni = points_to_mni(truth[["x", "y", "z"]].to_numpy(float), registration.transforms)
    return {"subject": label, "dice": dice(mask, truth_mask), "lesions": len(truth),
            "error_mm": float(np.linalg.norm(mni - true_mni, axis=1).mean()) if len(truth) else np.nan,
            "same_region": int((atlas.lookup(mni)["region"].to_numpy() == atlas.lookup(true_mni)["region"].to_numpy()).sum()),
            "similarity": registration.similarity, "n4_s": n4_s, "mask_registration_s": registration_s}


def simulate_at_snr(bids: Path, n: int, seed: int, preset: str, low: float, high: float) -> list[str]:
    """Heads of ``preset`` drawn as the simulator draws them, each with its SNR redrawn in [low, high)
    (the truth the measurements need; not a whole BIDS dataset)."""
    labels = []
    for number in range(1, n + 1):
        rng = np.random.default_rng([seed, number])
        params = dataclasses.replace(sample_subject_params(rng, preset), snr=round(float(rng.uniform(low, high)), 2))
        labels.append(f"sub-{number:03d}")
        write_subject(bids, labels[-1], simulate_subject(params, rng))
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1800)
    parser.add_argument("--preset", default="diverse")
    parser.add_argument("--bids", type=Path, help="an already simulated cohort (its first --subjects subjects)")
    parser.add_argument("--snr", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="redraw each simulated head's SNR uniformly in [LOW, HIGH)")
    args = parser.parse_args()
    atlas = mars_atlas()
    with tempfile.TemporaryDirectory() as tmp:
        bids = args.bids or Path(tmp) / "bids"
        if args.bids:
            labels = sorted(p.name for p in bids.glob("sub-*"))[: args.subjects]
        elif args.snr:
            labels = simulate_at_snr(bids, args.subjects, args.seed, args.preset, *args.snr)
        else:
            labels = simulate_cohort(bids, args.subjects, args.seed, args.preset)
        rows = []
        for label in labels:
            rows.append(measure(bids, label, atlas, Path(tmp)))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    lesions = table["lesions"].sum()
    print(f"\n| {len(table)} subjects, {lesions} microbleeds | |\n|---|---|")
    print(f"| brain-mask Dice, mean | {table['dice'].mean():.4f} |")
    print(f"| region accuracy at the true position | {table['same_region'].sum() / lesions:.4f} |")
    print(f"| mean MNI error at the true microbleeds | {table['error_mm'].mean():.2f} mm "
          f"({table['error_mm'].min():.2f}-{table['error_mm'].max():.2f} per subject) |")
    print(f"| registration similarity, mean | {table['similarity'].mean():.4f} |")
    print(f"| time: N4, mask + registration, mean | {table['n4_s'].mean():.1f} s, {table['mask_registration_s'].mean():.1f} s |")


if __name__ == "__main__":
    main()
