"""The model card: what the classifier was trained on, how, and how well it did on validation.

``model_card.json`` sits next to the weights and is what inference reads (each model's
threshold); ``MODEL_CARD.md`` is the same for people, with the FROC plot beside it.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

from cmbflow import __version__
from cmbflow.evaluate import plot_froc
from cmbflow.image import atomic_path, write_json
from cmbflow.patches import PATCH_MM, PATCH_SIZE
from cmbflow.training import validate_models

_REPO = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """cmbflow's version, with the git commit when run from a checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+git.{commit}" if commit else __version__


def build_card(models: dict, history: dict, training: dict) -> dict:
    """The model card's content (JSON-ready)."""
    return {
        "name": "cmbflow CandidateNet (stage-2 microbleed classifier)",
        "code_version": code_version(),
        "created": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "patch": {"extent_mm": PATCH_MM, "size": PATCH_SIZE,
                  "channels": ["magnitude / brain median", "high-pass phase x paramagnetic sign / pi (phase model)"]},
        "models": models,
        "training": {
            "cohort": {"preset": "training", "subjects": training["train_subjects"], "seed": training["train_seed"]},
            "params": training["params"],
            "models": {name: _training_summary(h) for name, h in history.items()},
        },
        "validation_cohort": {"preset": "diverse", "subjects": training["validation_subjects"],
                              "seed": training["validation_seed"], "note": "never trained on; thresholds chosen on it"},
        "intended_use": "ranking and calling microbleed candidates of cmbflow's stage 1 on GRE/SWI magnitude "
                        "(and phase); trained on simulated scans only",
    }


def _training_summary(history: dict) -> dict:
    """A model's training history without the epochs, plus each member's last-epoch loss."""
    last_epoch = history["epochs"][-1]["epoch"]
    return {key: value for key, value in history.items() if key != "epochs"} | {
        "final_loss": [epoch["loss"] for epoch in history["epochs"] if epoch["epoch"] == last_epoch]}


def _markdown(card: dict) -> str:
    lines = [
        f"# {card['name']}", "",
        f"Code {card['code_version']}, created {card['created']} ({card['machine']}).",
        f"Patches: {card['patch']['extent_mm']:g} mm cubes on a {card['patch']['size']}^3 world-aligned grid.", "",
        (f"Trained on {card['training']['cohort']['subjects']} simulated scans (preset `training`, seed "
         f"{card['training']['cohort']['seed']}); validated on {card['validation_cohort']['subjects']} other scans "
         f"(preset `diverse`, seed {card['validation_cohort']['seed']}), never trained on."), "",
        "| model | scans | threshold | microbleeds | sensitivity | precision | FP/scan | FROC @0.5 | @1 | @2 | @4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in card["models"].items():
        for group, report in model["validation"].items():
            m, froc = report["at_threshold"], report["froc_sensitivity_at_fp_per_scan"]
            lines.append(
                f"| {name} | {group} ({report['scans']}) | {model['threshold']:.3f} | {int(m['lesions'])} | "
                f"{m['sensitivity']:.3f} | {m['precision']:.3f} | {m['fp_per_scan']:.2f} | "
                + " | ".join(f"{froc[k]:.3f}" for k in ("0.5", "1.0", "2.0", "4.0")) + " |"
            )
    lines += ["", "Thresholds: " + "; ".join(f"{n}: {m['threshold_chosen_for']}" for n, m in card["models"].items()),
              "", "Training:", "```json", json.dumps(card["training"], indent=2), "```", "",
              f"Intended use: {card['intended_use']}.", "", "![FROC](froc.png)", ""]
    return "\n".join(lines)


def write_model_card(card: dict, out_json: str | Path, out_md: str | Path, out_png: str | Path) -> None:
    """Write the card as JSON, Markdown and a FROC plot of every model and scan group."""
    curves, points = {}, {}
    for name, model in card["models"].items():
        for group, report in model["validation"].items():
            key = f"{name} model, {group} scans"
            curves[key] = report["froc_curve"]
            points[key] = (report["at_threshold"]["fp_per_scan"], report["at_threshold"]["sensitivity"])
    plot_froc(curves, out_png, operating_points=points)
    with atomic_path(out_md) as tmp:
        Path(tmp).write_text(_markdown(card))
    write_json(card, out_json)


def validate_and_write_card(
    weights: dict[str, str | Path], history_json: str | Path, stage1_dir: str | Path, truth_dir: str | Path,
    training: dict, paramagnetic_sign: int, device: str | torch.device,
    out_json: str | Path, out_md: str | Path, out_png: str | Path,
) -> None:
    """Score the validation cohort with each model, choose thresholds, and write the model card."""
    models = validate_models(weights, stage1_dir, truth_dir, training["max_fp_per_scan"], paramagnetic_sign, device)
    card = build_card(models, json.loads(Path(history_json).read_text()), training)
    write_model_card(card, out_json, out_md, out_png)
