"""One registration per subject against two (issue 18): brain-mask Dice and region accuracy.

    python benchmarks/bench_registration.py [--subjects 10] [--seed 1800] [--preset diverse]

For each simulated subject: N4, then the template brain mask (a rough skull strip registered to
MNI152, whose brain mask is pulled back), then

* two registrations (before): the magnitude, skull-stripped with that mask, registered again;
* one registration (now): the mask's own registration is the subject's MNI transform.

The mask is the same either way, so its Dice against the simulator's brain is printed once. Each
transform maps the true microbleed positions to MNI; the error is the distance to the simulator's
MNI position, and region accuracy is how often the MARS region there equals the one at the truth.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmbflow import anat
from cmbflow.mars import mars_atlas
from cmbflow.simulate.bids import TRUTH_DIR, simulate_cohort
from cmbflow.transforms import points_to_mni


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1800)
    parser.add_argument("--preset", default="diverse")
    args = parser.parse_args()
    atlas = mars_atlas()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        for label in simulate_cohort(bids, args.subjects, args.seed, args.preset):
            mag = nib.load(bids / label / "anat" / f"{label}_part-mag_T2starw.nii.gz")
            truth_dir = bids / TRUTH_DIR / label / "anat"
            truth_mask = np.asarray(nib.load(truth_dir / f"{label}_desc-brain_mask.nii.gz").dataobj) > 0
            truth = pd.read_csv(truth_dir / f"{label}_desc-truth_lesions.tsv", sep="\t")
            truth = truth[truth["kind"] == "cmb"] if "kind" in truth else truth
            n4 = anat.n4_bias_correct(mag)
            start = time.perf_counter()
            mask, once = anat.brain_mask_and_registration(n4, None, Path(tmp) / label / "once_")
            one_s = time.perf_counter() - start
            start = time.perf_counter()
            twice = anat.register_to_mni(n4, mask, Path(tmp) / label / "twice_")
            second_s = time.perf_counter() - start
            xyz = truth[["x", "y", "z"]].to_numpy(float)
            true_mni = truth[["mni_x", "mni_y", "mni_z"]].to_numpy(float)
            true_region = atlas.lookup(true_mni)["region"].to_numpy()
            row = {"subject": label, "dice": dice(mask, truth_mask), "lesions": len(truth),
                   "one_registration_s": one_s, "second_registration_s": second_s}
            for name, result in (("twice", twice), ("once", once)):
                mni = points_to_mni(xyz, result.transforms)
                row[f"{name}_error_mm"] = float(np.linalg.norm(mni - true_mni, axis=1).mean()) if len(xyz) else np.nan
                row[f"{name}_same_region"] = int((atlas.lookup(mni)["region"].to_numpy() == true_region).sum())
                row[f"{name}_similarity"] = result.similarity
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    lesions = table["lesions"].sum()
    print("\n| | two registrations (before) | one registration (now) |\n|---|---|---|")
    print(f"| brain-mask Dice, mean of {len(table)} | {table['dice'].mean():.4f} | {table['dice'].mean():.4f} (same mask) |")
    print(f"| region accuracy at the true position ({lesions} microbleeds) | "
          f"{table['twice_same_region'].sum() / lesions:.4f} | {table['once_same_region'].sum() / lesions:.4f} |")
    print(f"| mean MNI error of the true positions | {table['twice_error_mm'].mean():.2f} mm | "
          f"{table['once_error_mm'].mean():.2f} mm |")
    print(f"| registration similarity, mean | {table['twice_similarity'].mean():.4f} | {table['once_similarity'].mean():.4f} |")
    print(f"| time (mask + registration) | {table['one_registration_s'].mean() + table['second_registration_s'].mean():.1f} s | "
          f"{table['one_registration_s'].mean():.1f} s |")


if __name__ == "__main__":
    main()
