"""Command line: the BIDS-App entry point, the simulator and a cohort overview.

    cmbflow BIDS_DIR OUTPUT_DIR participant|group [options] [snakemake args...]  (cmbflow.bids_app)
    cmbflow simulate OUT --subjects N --seed S [--preset tiny|standard|diverse|training|site] [--sessions [N]]
    cmbflow evaluate [--labels] REFERENCE OUTPUT_DIR [--json FILE] [--plot PNG]
    cmbflow finetune OUTPUT_DIR RATINGS_DIR MODEL_DIR [--base-model DIR] [--replay-scans N] [--seed S]
    cmbflow show OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cmbflow import __version__, bids_app
from cmbflow.errors import InputError


def run_simulate(argv: list[str]) -> int:
    from cmbflow.simulate import (  # the simulator loads nilearn (seconds)
        PRESETS,
        simulate_cohort,
    )

    parser = argparse.ArgumentParser(prog="cmbflow simulate", description="Write a simulated BIDS cohort with known microbleeds.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=PRESETS, default="standard")
    parser.add_argument("--sessions", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="give every subject sessions: alone, one (ses-01); N >= 2, a baseline and N-1 "
                        "follow-ups of the same head, moved, with new microbleeds (docs/longitudinal.md)")
    args = parser.parse_args(argv)
    labels = simulate_cohort(args.out, args.subjects, args.seed, preset=args.preset, sessions=args.sessions)
    print(f"simulated {len(labels)} subjects in {args.out} (truth in {args.out / 'derivatives' / 'simulation'})")
    return 0


def run_evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cmbflow evaluate",
        description="Compare workflow outputs with simulated ground truth or manual labels (points, lesion masks "
        "or raters' ratings; docs/evaluation.md): sensitivity, precision, FP per scan, FROC, candidate recall, "
        "per-region sensitivity, calibration (ECE), false calls at simulated iron nuclei; overall and split by "
        "whether the scan's phase was used.",
    )
    parser.add_argument("reference", type=Path,
                        help="the simulator's derivatives/simulation folder, or with --labels the manual labels")
    parser.add_argument("output_dir", type=Path, help="the workflow's output_dir")
    parser.add_argument("--labels", action="store_true",
                        help="REFERENCE holds manual labels: a folder of points tables, lesion masks or ratings, "
                        "or one points table of the cohort")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--plot", type=Path, help="also draw the FROC curves (overall and per group) to this PNG")
    args = parser.parse_args(argv)
    from cmbflow.evaluate import evaluate_labels, evaluate_outputs, plot_froc
    from cmbflow.image import write_json
    from cmbflow.longitudinal import evaluate_longitudinal

    result = (evaluate_labels if args.labels else evaluate_outputs)(args.reference, args.output_dir)
    followups = None if args.labels else evaluate_longitudinal(args.reference, args.output_dir)
    calls = result["calls"]
    print(f"{int(calls['scans'])} scans, {int(calls['lesions'])} microbleeds: sensitivity {calls['sensitivity']:.3f}, "
          f"precision {calls['precision']:.3f}, F1 {calls['f1']:.3f}, FP/scan {calls['fp_per_scan']:.2f}")
    print(f"candidate recall {result['candidate_recall']:.3f} ({result['candidates_per_scan']:.0f} candidates/scan)")
    print("FROC sensitivity at FP/scan " + ", ".join(f"{k}: {v:.3f}" for k, v in result["froc_sensitivity_at_fp_per_scan"].items()))
    for by in ("region", "diameter"):
        if f"per_{by}" in result:
            print(f"per {by}: " + ", ".join(f"{k} {v['sensitivity']:.3f} (n={v['lesions']})"
                                            for k, v in result[f"per_{by}"].items()))
    fit = result["calibration"]
    print(f"calibration of the candidates' probability: ECE {fit['ece']:.3f} ({fit['candidates']} candidates), "
          f"{fit['ece_above_0.1']:.3f} over those >= 0.1")
    if "false_calls_at_iron_nuclei" in result:
        at = result["false_calls_at_iron_nuclei"]
        print("false calls at iron nuclei: " + (", ".join(f"{k} {v}" for k, v in sorted(at.items())) or "none"))
    if "region_accuracy" in result:
        located = result["region_accuracy"]
        print(f"region of matched calls = atlas region of the true position: {located['accuracy']:.3f} "
              f"(n={located['matched_calls']})")
    for group, figures in result["by_phase"].items():
        found, froc_at = figures["calls"], figures["froc_sensitivity_at_fp_per_scan"]
        print(f"{group.replace('_', '-')}: {figures['scans']} scans, {int(found['lesions'])} microbleeds: "
              f"sensitivity {found['sensitivity']:.3f}, FP/scan {found['fp_per_scan']:.2f}, "
              f"FROC at 0.5 FP {froc_at['0.5']:.3f}, at 1 FP {froc_at['1.0']:.3f}")
    if followups:
        result["longitudinal"] = followups
        print(f"new microbleeds at {followups['followups']} follow-ups ({followups['true_new']} true): sensitivity "
              f"{followups['sensitivity']:.3f}, false new per follow-up {followups['false_new_per_followup']:.2f}, "
              f"ARIA-H grade agreement {followups['grade_agreement']:.3f}")
    if args.json:
        write_json(result, args.json)
    if args.plot:
        groups = {"all": result, **result["by_phase"]}
        labels = {group: f"{group.replace('_', '-')} ({figures['scans']} scans)" for group, figures in groups.items()}
        plot_froc(
            {labels[group]: points for group, points in result["froc_curve"].items()},
            args.plot,
            operating_points={labels[group]: (figures["calls"]["fp_per_scan"], figures["calls"]["sensitivity"])
                              for group, figures in groups.items()},
        )
    return 0


def run_finetune(argv: list[str]) -> int:
    import logging

    from cmbflow.finetune import FinetuneParams, finetune  # torch

    parser = argparse.ArgumentParser(
        prog="cmbflow finetune",
        description="Adapt the classifier to a site from its raters' verdicts (docs/ratings.md): recalibrate its "
        "threshold and temperature and fine-tune it on the rated scans' candidates, with simulated replay; write a "
        "new model folder for classifier.model_dir, with a model card of cross-validated figures before and after.",
    )
    parser.add_argument("output_dir", type=Path, help="a finished cmbflow output of the rated scans")
    parser.add_argument("ratings_dir", type=Path, help="the raters' ratings of those scans (docs/ratings.md)")
    parser.add_argument("model_dir", type=Path, help="a new folder for the site's model (never the shipped one)")
    parser.add_argument("--base-model", type=Path, help="start from this model folder (default: the shipped model)")
    parser.add_argument("--replay-scans", type=int, default=FinetuneParams.replay_scans,
                        help="simulated scans replayed beside the site's (made at run time)")
    parser.add_argument("--seed", type=int, default=FinetuneParams.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card = finetune(args.output_dir, args.ratings_dir, args.model_dir, args.base_model,
                    FinetuneParams(replay_scans=args.replay_scans, seed=args.seed))
    for variant, entry in card["models"].items():
        if entry["tuned"]:
            cv = entry["cross_validation"]
            print(f"{variant} model, cross-validated on {len(card['tuned_on']['scans'])} rated scans: sensitivity "
                  f"{cv['before']['sensitivity']} -> {cv['after']['sensitivity']}, FP/scan "
                  f"{cv['before']['fp_per_scan']} -> {cv['after']['fp_per_scan']} (threshold {entry['threshold']:.3f}, "
                  f"temperature {entry['temperature']:.2f})")
        else:
            print(f"{variant} model: copied unchanged ({entry['why_not']})")
    print(f"model written to {args.model_dir}; use it with: cmbflow BIDS_DIR OUTPUT_DIR participant --model-dir "
          f"{args.model_dir.resolve()} (snakemake: --config 'classifier={{\"model_dir\": \"{args.model_dir.resolve()}\"}}')")
    return 0


def run_show(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cmbflow show", description="Print a cohort's summary table "
                                     "(the partial one, with every subject's status, when subjects failed).")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    group = args.output_dir / "group"
    kind = "" if (group / "cohort_summary.csv").exists() or not (group / "cohort_summary_partial.csv").exists() else "_partial"
    path = group / f"cohort_summary{kind}.csv"
    summary = pd.read_csv(path)
    columns = [c for c in ("participant_id", "session_id", "n_cmb", "n_lobar", "n_deep", "n_infratentorial",
                           "boston2_cmb_criterion", "n_candidates", "phase_used", "brain_volume_ml",
                           "registration_alignment", "status") if c in summary.columns]
    print(f"cohort summary: {path.resolve()}")
    print(f"detections:     {(group / f'cohort_detections{kind}.csv').resolve()}")
    print(summary[columns].to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"simulate": run_simulate, "evaluate": run_evaluate, "finetune": run_finetune, "show": run_show}
    if argv[:1] == ["--version"]:
        print(f"cmbflow {__version__}")
        return 0
    if argv and argv[0] in commands:
        try:
            return commands[argv[0]](argv[1:])
        except InputError as err:  # bad input: one line, no traceback
            print(f"cmbflow error: {err}", file=sys.stderr)
            return 2
    return bids_app.run(argv)


if __name__ == "__main__":
    sys.exit(main())
