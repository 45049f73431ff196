"""Adapting the classifier to a shifted site (issue 16): false calls before and after `cmbflow finetune`.

    python benchmarks/bench_finetune.py [--work /tmp/cmbflow-site] [--scans 20] [--seed 2100] [--rated 5] [--choices 4]

Simulates a site outside the training ranges (preset ``site``), runs the workflow on it with the
shipped model, then splits the scans into disjoint choices of ``--rated`` scans. For each
choice: a perfect rater's ratings of those scans (from the simulator's truth), `cmbflow
finetune`, and the other scans scored with the shipped model and with the site's model, each
at its own threshold, against the simulator's truth (calls as the workflow makes them: one per
lesion). Prints a Markdown table, and the mean over the choices.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmbflow.evaluate import write_ratings_from_truth
from cmbflow.finetune import RatedScan, finetune, load_rated_scans
from cmbflow.model import load_classifier
from cmbflow.simulate.bids import TRUTH_DIR, simulate_cohort
from cmbflow.training import ScanScores, metrics_at

REPO = Path(__file__).resolve().parents[1]


def scored(scan: RatedScan, model_dir: Path | None, truth: pd.DataFrame) -> tuple[ScanScores, float]:
    """A scan's standing candidates with the model's probabilities, against the true bleeds; and its threshold."""
    from cmbflow.detections import superseded

    classifier = load_classifier(model_dir, has_phase=scan.has_phase)
    channels = classifier.model.spec.input_channels
    probability = classifier.predict(scan.patches[:, :channels], scan.features[:, :classifier.model.spec.n_features])
    standing = ~superseded(scan.xyz, probability)
    bleeds = truth[truth["kind"] == "cmb"]
    return ScanScores(scan.xyz[standing], probability[standing], bleeds[["x", "y", "z"]].to_numpy(float),
                      bleeds["diameter_mm"].to_numpy(float) / 2, scan.voxel_size), classifier.threshold


def figures(scans: list[tuple[ScanScores, float]]) -> dict[str, float]:
    per_scan = [metrics_at([s], threshold) for s, threshold in scans]
    tp, fp = sum(m["true_positives"] for m in per_scan), sum(m["false_positives"] for m in per_scan)
    lesions = sum(m["lesions"] for m in per_scan)
    return {"sensitivity": tp / lesions, "fp_per_scan": fp / len(scans), "precision": tp / max(tp + fp, 1),
            "lesions": lesions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cmbflow-site"))
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2100)
    parser.add_argument("--rated", type=int, default=5)
    parser.add_argument("--choices", type=int, default=4, help="disjoint choices of rated scans (at most scans/rated)")
    args = parser.parse_args()
    bids, out, truth_dir = args.work / "bids", args.work / "out", args.work / "bids" / TRUTH_DIR
    if not bids.exists():
        simulate_cohort(bids, args.scans, args.seed, preset="site")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                    "--config", f"bids_dir={bids}", f"output_dir={out}", "--quiet"], check=True, cwd=REPO)
    print(f"workflow on {args.scans} scans: {time.perf_counter() - started:.0f} s (0 if already done)")
    labels = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    everything = args.work / "ratings_all"
    write_ratings_from_truth(truth_dir, out, everything, labels)  # only to read every scan's patches once
    context_mm = load_classifier(None, has_phase=True).model.spec.context_mm  # fine-tuned models keep it
    scans = {scan.label: scan for scan in load_rated_scans(out, everything, context_mm)}
    truth = {label: pd.read_csv(truth_dir / label / "anat" / f"{label}_desc-truth_lesions.tsv", sep="\t")
             for label in labels}
    order = list(np.random.default_rng(args.seed).permutation(labels))
    rows = []
    for choice in range(min(args.choices, len(labels) // args.rated)):
        rated = sorted(order[choice * args.rated:(choice + 1) * args.rated])
        ratings, model_dir = args.work / f"ratings_{args.rated}x{choice}", args.work / f"model_{args.rated}x{choice}"
        write_ratings_from_truth(truth_dir, out, ratings, rated)
        if not model_dir.exists():
            started = time.perf_counter()
            finetune(out, ratings, model_dir)
            (model_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
        seconds = float((model_dir / "seconds.txt").read_text())
        test = [label for label in labels if label not in rated]
        before = figures([scored(scans[label], None, truth[label]) for label in test])
        after = figures([scored(scans[label], model_dir, truth[label]) for label in test])
        rows.append({"rated scans": " ".join(rated), "finetune s": seconds, "test scans": len(test),
                     "microbleeds": int(before["lesions"]),
                     "sensitivity before": before["sensitivity"], "sensitivity after": after["sensitivity"],
                     "FP/scan before": before["fp_per_scan"], "FP/scan after": after["fp_per_scan"],
                     "precision before": before["precision"], "precision after": after["precision"]})
        print(pd.DataFrame(rows[-1:]).to_markdown(index=False, floatfmt=".3f"), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    mean = table.drop(columns=["rated scans"]).mean(numeric_only=True)
    print(f"mean of {len(rows)} choices: sensitivity {mean['sensitivity before']:.3f} -> {mean['sensitivity after']:.3f}, "
          f"FP/scan {mean['FP/scan before']:.2f} -> {mean['FP/scan after']:.2f} "
          f"({100 * (1 - mean['FP/scan after'] / mean['FP/scan before']):.0f} % fewer), "
          f"finetune {mean['finetune s']:.0f} s")


if __name__ == "__main__":
    main()
