"""The model card: what the classifier was trained on, how, and how well it did on validation.

``model_card.json`` sits next to the weights and is what inference reads (each model's
threshold and weights file); ``MODEL_CARD.md`` is the same for people, with the FROC plot beside
it. Every card also carries the static text below (licence, intended use, limitations) and the
SHA-256 of each weights file, so a retrained card says the same; :func:`restamp_card` rewrites
that text in an existing card without retraining.
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
from cmbflow.model import MODEL_CARD, VARIANTS, sha256
from cmbflow.patches import MIRROR_RADIUS_MM, PATCH_MM, PATCH_SIZE
from cmbflow.training import validate_models

_REPO = Path(__file__).resolve().parents[2]

LICENSE = "MIT, the same licence as cmbflow's code (see LICENSE in the repository)"

INTENDED_USE = (
    "Research use: finding and counting cerebral microbleeds in cohorts of gradient-echo (T2*w/SWI) scans, "
    "as cmbflow's stage-2 classifier of its stage-1 candidates, on the magnitude and, when present, the phase. "
    "Not a medical device: not for diagnosis, screening or any clinical decision about a patient"
)

LIMITATIONS = [
    "Trained, validated and tested on simulated scans only. No annotated real data was used for training, "
    "for choosing the thresholds or for measuring performance (one real GRE crop without microbleeds served "
    "only as a check for false calls).",
    "Performance on real scans has not been measured. Every simulated head is the same MNI152 brain; real "
    "cohorts differ in anatomy, pathology, artefacts, vendors and reconstructions.",
    "Coarse voxels: trained on 0.5-1 mm in-plane voxels. Coarser scans (in-plane over 1 mm or slices over "
    "3 mm) get more false calls, most of all without phase; cmbflow's QC pages warn about such scans.",
    "Without phase the magnitude-only model is weaker: calcifications look like microbleeds on magnitude "
    "and are most of its false positives. Give it the phase images whenever the scanner saved them.",
    "The thresholds and the design (number of networks, one call per lesion) were chosen on the "
    "validation cohort, so its figures are optimistic; see the held-out figures where the card has them.",
    "Long echo times with atrophy (TE 40-50 ms, the simulator's `shifted` preset): stage 1 finds 0.85 of the "
    "bleeds, but the classifier calls few of those; on such scans the counts are far too low.",
    "Iron-rich nuclei (globus pallidus, red nucleus, substantia nigra) and veins remain the commonest false "
    "calls. The mirror-partner input, and the magnitude-only model's mirror veto, need the subject's "
    "registration to MNI; a scan that registers badly loses them. Check deep and brainstem calls against the "
    "same place in the other hemisphere. The veto would also drop one of two bleeds at exactly mirrored places, "
    "and at long echo times with thick slices (the `shifted` preset) faint bleeds whose surroundings are as dark.",
]

#: Figures measured for one set of weights on simulated cohorts that chose nothing, through the whole
#: workflow (``cmbflow evaluate``; benchmarks/RESULTS.md, 2026-12-07, with the calibration fitted that
#: day and the magnitude model's mirror veto). A card gets them only when its weights are these exact
#: files, so a retrained card never carries another model's figures.
HELD_OUT_TEST = {
    "weights_sha256": {
        "phase": "aa725c26aa6a6137135435a0d0ed182008568f9a7dd76f90388120af818f0ba5",
        "magnitude": "58f4c7e9217bd594938f9e170897d9e6e1ae288c37f8edbd7a679fcb502da058",
    },
    "measured": "2026-12-08",
    "cohorts": [
        {"cohort": {"name": "In-domain held-out", "preset": "diverse", "seed": 5000, "subjects": 20, "microbleeds": 176,
                    "scans_without_phase": 3, "note": "the validation preset with another seed"},
         "candidate_recall": 0.989, "ece": 0.001, "ece_above_0.1": 0.046, "false_calls_at_iron_nuclei": 1,
         "models": {
             "phase": {"phase": {"scans": 17, "microbleeds": 160, "sensitivity": 0.900, "precision": 0.935,
                                 "fp_per_scan": 0.59, "froc": [0.887, 0.950, 0.956, 0.956]}},
             "magnitude": {"magnitude_only": {"scans": 3, "microbleeds": 16, "sensitivity": 0.875, "precision": 0.778,
                                              "fp_per_scan": 1.33, "froc": [0.812, 0.875, 0.875, 0.938]}},
         }},
        {"cohort": {"name": "One site", "preset": "site", "seed": 2200, "subjects": 20, "microbleeds": 126,
                    "scans_without_phase": 0,
                    "note": "3 T, 1.1-1.25 mm in-plane, 3.2-3.6 mm slices, TE 35-45 ms, SNR 10-18, strong veins, "
                            "deep-grey-matter iron 0.18-0.28 ppm, small heads: partly outside the training ranges"},
         "candidate_recall": 0.992, "ece": 0.005, "ece_above_0.1": 0.159, "false_calls_at_iron_nuclei": 9,
         "models": {
             "phase": {"phase": {"scans": 20, "microbleeds": 126, "sensitivity": 0.651, "precision": 0.509,
                                 "fp_per_scan": 3.95, "froc": [0.524, 0.556, 0.603, 0.651]}},
         }},
        {"cohort": {"name": "Shifted", "preset": "shifted", "seed": 6000, "subjects": 20, "microbleeds": 85,
                    "scans_without_phase": 6,
                    "note": "beyond the training ranges (slices 3.5-4 mm, TE 40-50 ms, 5-7 mm warps, 1.5-2 mm atrophy, "
                            "stronger veins and iron)"},
         "candidate_recall": 0.847, "ece": 0.004, "ece_above_0.1": 0.271, "false_calls_at_iron_nuclei": 0,
         "models": {
             "phase": {"phase": {"scans": 14, "microbleeds": 52, "sensitivity": 0.135, "precision": 0.194,
                                 "fp_per_scan": 2.07, "froc": [0.096, 0.096, 0.135, 0.212]}},
             "magnitude": {"magnitude_only": {"scans": 6, "microbleeds": 33, "sensitivity": 0.091, "precision": 0.158,
                                              "fp_per_scan": 2.67, "froc": [0.030, 0.030, 0.061, 0.091]}},
         }},
    ],
    "notes": [
        "Measured on 2026-12-08 with the magnitude-only model's mirror veto reading the image at the mirror (0.8, "
        "chosen on validation, with that model's threshold chosen again with it: 0.339). In-domain and shifted were "
        "run from nothing; the site was not run again (all its scans have phase, and the phase model is unchanged). "
        "With the veto that read stage 1's candidates at the mirror (2026-12-07): in-domain magnitude-only 0.875 at "
        "1.00 (FROC 0.812 / 0.875 / 0.875 / 1.000), ECE >= 0.1 0.050; shifted 2 false calls at iron nuclei, phase "
        "0.154 at 2.07, magnitude-only 0.121 at 3.83 (FROC 0.030 / 0.061 / 0.091 / 0.121). Before any veto: "
        "in-domain magnitude-only 0.875 at 2.33, 5 false calls at iron nuclei; site 0.643 at 4.00.",
        "Before this model (the 2026-11-26 weights, on the same outputs of 2026-12-02): in-domain 1.55 false calls per "
        "scan (17 at iron nuclei), one site 7.32 (26 at iron nuclei) with sensitivity 0.680.",
        "Calibration (temperature and shift, fitted on the validation cohort on 2026-12-07) changes the probabilities, "
        "not the calls: before it, ECE over the candidates >= 0.1 was 0.148 in-domain and 0.298 at the site.",
        "Measured with the stage 1 of the second 2026-12-07 change (dark components at three depths; a lesion measured "
        "against the tissue around it). With the stage 1 before it, on the same cohorts: in-domain candidate recall "
        "0.977, phase 0.906 at 0.53 false calls per scan, 3 at iron nuclei; site 0.968, 0.603 at 3.90; shifted 0.506, "
        "phase 0.077 at 2.21 and magnitude-only 0.061 at 3.67.",
    ],
}

#: FP-per-scan points of the FROC columns, in the order of HELD_OUT_TEST's "froc" lists.
FROC_POINTS = ("0.5", "1.0", "2.0", "4.0")
_GROUP_ORDER = ("all", "phase", "magnitude_only")


def static_sections(weights_sha256: dict[str, str]) -> dict:
    """The text every card carries, the weights' checksums and, for the weights it was measured on,
    the held-out test figures."""
    sections = {"license": LICENSE, "intended_use": INTENDED_USE, "limitations": list(LIMITATIONS),
                "weights_sha256": dict(weights_sha256)}
    if weights_sha256 == HELD_OUT_TEST["weights_sha256"]:
        sections["held_out_test"] = {k: v for k, v in HELD_OUT_TEST.items() if k != "weights_sha256"}
    return sections


def code_version() -> str:
    """cmbflow's release, with the git commit when run from a checkout (an editable install's own
    version names the commit it was installed at, not the current one)."""
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__.split('+')[0]}+git.{commit}" if commit else __version__


def build_card(models: dict, history: dict, training: dict, weights_sha256: dict[str, str]) -> dict:
    """The model card's content (JSON-ready)."""
    return static_sections(weights_sha256) | {
        "name": "cmbflow CandidateNet (stage-2 microbleed classifier)",
        "code_version": code_version(),
        "created": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "patch": {"extent_mm": PATCH_MM, "size": PATCH_SIZE, "context_mm": training["params"]["context_mm"],
                  "channels": ["magnitude / brain median", "high-pass phase x paramagnetic sign / pi (phase model)"]},
        "models": models,
        "training": {
            "cohort": {"preset": "training", "subjects": training["train_subjects"], "seed": training["train_seed"]},
            "params": training["params"],
            "models": {name: _training_summary(h) for name, h in history.items()},
        },
        "validation_cohort": {"preset": "diverse", "subjects": training["validation_subjects"],
                              "seed": training["validation_seed"], "note": "never trained on; thresholds chosen on it"},
    }


def _training_summary(history: dict) -> dict:
    """A model's training history without the epochs, plus each member's last-epoch loss."""
    last_epoch = history["epochs"][-1]["epoch"]
    return {key: value for key, value in history.items() if key != "epochs"} | {
        "final_loss": [epoch["loss"] for epoch in history["epochs"] if epoch["epoch"] == last_epoch]}


def _ordered(names, order) -> list:
    """``names`` in ``order`` first, then any others as they come."""
    names = list(names)
    return [n for n in order if n in names] + [n for n in names if n not in order]


def _markdown(card: dict) -> str:
    models = {name: card["models"][name] for name in _ordered(card["models"], VARIANTS)}
    lines = [
        f"# {card['name']}", "",
        f"Code {card['code_version']}, created {card['created']} ({card['machine']}).",
        (f"Patches: {card['patch']['extent_mm']:g} mm cubes on a {card['patch']['size']}^3 world-aligned grid"
         + (f", each kind also as a {card['patch']['context_mm']:g} mm wide view on the same grid."
            if card["patch"].get("context_mm") else ".")), "",
        f"**Licence:** {card['license']}.", "",
        f"**Intended use:** {card['intended_use']}.", "",
        "## Limitations", "",
        *[f"- {item}" for item in card["limitations"]], "",
        "## Validation", "",
        (f"Trained on {card['training']['cohort']['subjects']} simulated scans (preset `training`, seed "
         f"{card['training']['cohort']['seed']}); validated on {card['validation_cohort']['subjects']} other scans "
         f"(preset `diverse`, seed {card['validation_cohort']['seed']}), never trained on."), "",
        "| model | scans | threshold | microbleeds | sensitivity | precision | FP/scan | FROC @0.5 | @1 | @2 | @4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in models.items():
        for group in _ordered(model["validation"], _GROUP_ORDER):
            report = model["validation"][group]
            m, froc = report["at_threshold"], report["froc_sensitivity_at_fp_per_scan"]
            lines.append(
                f"| {name} | {group} ({report['scans']}) | {model['threshold']:.3f} | {int(m['lesions'])} | "
                f"{m['sensitivity']:.3f} | {m['precision']:.3f} | {m['fp_per_scan']:.2f} | "
                + " | ".join(f"{froc[k]:.3f}" for k in FROC_POINTS) + " |"
            )
    lines += ["", "Thresholds: " + "; ".join(f"{n}: {m['threshold_chosen_for']}" for n, m in models.items()), ""]
    vetoes = [f"Mirror veto ({n} model): no call where the image within {MIRROR_RADIUS_MM:g} mm of the mirror image "
              f"across the MNI midline is at least {m['mirror_veto']:g} times as dark, as at bilateral iron nuclei; "
              "the figures above are with it." for n, m in models.items() if "mirror_veto" in m]
    lines += [*vetoes, ""] if vetoes else []
    lines += _calibration_markdown(models)
    if "held_out_test" in card:
        lines += _held_out_markdown(card["held_out_test"], models)
    lines += ["## Weights", "", "| model | file | SHA-256 |", "|---|---|---|"]
    lines += [f"| {name} | `{model['weights']}` | `{card['weights_sha256'].get(name, 'n/a')}` |"
              for name, model in models.items()]
    lines += ["", "## Training", "", "```json", json.dumps(card["training"], indent=2), "```", "",
              "![FROC](froc.png)", ""]
    return "\n".join(lines)


def _calibration_markdown(models: dict) -> list[str]:
    """Each model's reliability table and ECE on its validation scans (pooled group), if measured."""
    fits = {name: next(iter(model["validation"].values()))["calibration"] for name, model in models.items()
            if "calibration" in next(iter(model["validation"].values()))}
    if not fits:
        return []
    lines = [
        "## Calibration", "",
        ("Reliability of the probability on the validation scans' candidates (those the workflow can call: "
         "not superseded); a candidate is a bleed when it lies within matching distance of one. ECE: expected "
         "calibration error over 10 equal-width bins, on all candidates and on those of probability >= 0.1 "
         "(most candidates are clear negatives near 0, which make the first small). The probabilities are "
         "sigmoid(mean logit / temperature + shift), both fitted on these candidates (least log loss)."), "",
        "| model | candidates | bleeds | temperature | shift | ECE | ECE (p >= 0.1) | before the fit |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {fit['candidates']} | {fit['bleeds']} | {models[name].get('temperature', 1.0):.2f} | "
          f"{models[name].get('logit_shift', 0.0):.2f} | {fit['ece']:.3f} | {fit['ece_above_0.1']:.3f} | "
          f"{models[name].get('ece_above_0.1_before_calibration', fit['ece_above_0.1']):.3f} |"
          for name, fit in fits.items()],
        "", "| probability | " + " | ".join(f"{name}: candidates, observed fraction of bleeds" for name in fits) + " |",
        "|---|" + "---|" * len(fits),
    ]
    for b, row in enumerate(next(iter(fits.values()))["bins"]):
        cells = [f"{fit['bins'][b]['candidates']}, {fit['bins'][b]['fraction_bleeds']:.2f}"
                 if fit["bins"][b]["candidates"] else "0, -" for fit in fits.values()]
        lines.append(f"| {row['low']:.1f}-{row['high']:.1f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _held_out_markdown(test: dict, models: dict) -> list[str]:
    lines = ["## Held-out test cohorts", "",
             f"Cohorts that chose nothing, scored through the whole workflow at the card's thresholds (one call "
             f"per lesion); measured {test['measured']} for these weights.", ""]
    for entry in test["cohorts"]:
        cohort = entry["cohort"]
        lines += [
            (f"**{cohort['name']}**: {cohort['subjects']} simulated scans (preset `{cohort['preset']}`, seed "
             f"{cohort['seed']}, {cohort['microbleeds']} microbleeds, {cohort['scans_without_phase']} scans without "
             f"phase), {cohort['note']}. Candidate recall {entry['candidate_recall']:.3f}; calibration ECE "
             f"{entry['ece']:.3f} ({entry['ece_above_0.1']:.3f} over candidates >= 0.1); false calls at iron nuclei: "
             f"{entry['false_calls_at_iron_nuclei']}."), "",
            "| model | scans | microbleeds | sensitivity | precision | FP/scan | FROC @0.5 | @1 | @2 | @4 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in _ordered(entry["models"], list(models)):
            for group in _ordered(entry["models"][name], _GROUP_ORDER):
                m = entry["models"][name][group]
                lines.append(f"| {name} | {group} ({m['scans']}) | {m['microbleeds']} | {m['sensitivity']:.3f} | "
                             f"{m['precision']:.3f} | {m['fp_per_scan']:.2f} | "
                             + " | ".join(f"{v:.3f}" for v in m["froc"]) + " |")
        lines.append("")
    return lines + [f"{note}" for note in test.get("notes", [])] + [""]


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
    models = validate_models(weights, stage1_dir, truth_dir, training["max_fp_per_scan"], paramagnetic_sign, device,
                             training["mirror_veto"])
    checksums = {name: sha256(path) for name, path in weights.items()}
    card = build_card(models, json.loads(Path(history_json).read_text()), training, checksums)
    write_model_card(card, out_json, out_md, out_png)


def restamp_card(model_dir: str | Path) -> dict:
    """Bring an existing card's static text and checksums up to date, without retraining.

    Reads ``model_card.json`` in ``model_dir``, replaces the licence, intended use, limitations,
    weights checksums (from the weights files beside it) and held-out figures, and rewrites the JSON
    and ``MODEL_CARD.md``. The measured figures, the weights and the FROC plot are left as they are.
    """
    folder = Path(model_dir)
    card = json.loads((folder / MODEL_CARD).read_text())
    checksums = {name: sha256(folder / model["weights"]) for name, model in card["models"].items()}
    card.pop("held_out_test", None)  # kept only when the weights are the ones it was measured on
    card |= static_sections(checksums)
    with atomic_path(folder / "MODEL_CARD.md") as tmp:
        Path(tmp).write_text(_markdown(card))
    write_json(card, folder / MODEL_CARD)
    return card
