"""Training the stage-2 classifier on simulated cohorts, and choosing its operating point.

The examples are the stage-1 candidates of simulated scans, exactly as the workflow finds them:
a candidate that matches a true microbleed is positive; everything else (veins, calcifications,
iron, noise) is negative, so the network learns what it will really be shown.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy import optimize, special
from torch.nn import functional as F

from cmbflow.config import CandidateParams, TrainParams
from cmbflow.derivatives import BRAIN_MASK, HPPHASE, MNI_XFM, N4_MAGNITUDE, STAGE1_TABLE
from cmbflow.detections import standing
from cmbflow.evaluate import (
    FROC_FP_RATES,
    calibration,
    detection_metrics,
    froc_curve,
    match_detections,
    near_truth,
)
from cmbflow.image import atomic_path, voxel_sizes, write_json
from cmbflow.model import (
    CandidateNet,
    Classifier,
    ModelSpec,
    ResidualNet,
    load_model,
    save_model,
)
from cmbflow.patches import add_mirror_measures, candidate_features, candidate_patches, n_features, views
from cmbflow.transforms import Transforms, points_to_mni

log = logging.getLogger(__name__)

TRUTH_SUFFIX = "_desc-truth_lesions.tsv"


@dataclass(frozen=True)
class ScanOutputs:
    """One scan's workflow outputs that the classifier reads (stage-1 table and images)."""

    prefix: str
    stage1: Path
    magnitude: Path
    mask: Path
    hpphase: Path | None
    xfm: Path  # the registration's affine (subject <-> MNI)

    @classmethod
    def find(cls, stage1: Path) -> ScanOutputs:
        prefix = stage1.name.removesuffix(f"{STAGE1_TABLE}.tsv")
        folder = stage1.parent
        hpphase = folder / f"{prefix}{HPPHASE}.nii.gz"
        return cls(prefix, stage1, folder / f"{prefix}{N4_MAGNITUDE}.nii.gz", folder / f"{prefix}{BRAIN_MASK}.nii.gz",
                   hpphase if hpphase.exists() else None, folder / f"{prefix}{MNI_XFM}")


def scan_patches(
    scan: ScanOutputs, paramagnetic_sign: int, context_mm: float = 0.0
) -> tuple[pd.DataFrame, npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The stage-1 table of a scan (with MNI positions and mirror measures, the contrast ratio of
    the default :class:`cmbflow.config.CandidateParams`), its classifier patches (n, channels, S, S,
    S; :func:`cmbflow.patches.candidate_patches`) and voxel size."""
    table = pd.read_csv(scan.stage1, sep="\t")
    if "mni_x" not in table:  # a stage-1 table; the workflow's final tables have them
        table[["mni_x", "mni_y", "mni_z"]] = points_to_mni(table[["x", "y", "z"]].to_numpy(float), Transforms(scan.xfm))
    img = nib.load(scan.magnitude)
    data = img.get_fdata(dtype=np.float32)
    mask = np.asanyarray(nib.load(scan.mask).dataobj) > 0
    add_mirror_measures(table, data, mask, img.affine, Transforms(scan.xfm), CandidateParams())
    phase = None if scan.hpphase is None else nib.load(scan.hpphase).get_fdata(dtype=np.float32)
    patches = candidate_patches(data, mask, img.affine, table[["x", "y", "z"]].to_numpy(float), phase,
                                paramagnetic_sign, context_mm)
    return table, patches, voxel_sizes(img.affine)


def label_candidates(candidates: pd.DataFrame, truth: pd.DataFrame, voxel_size: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """What each candidate is: 'cmb' (matched one to one to a true bleed), 'calcification', or 'other'."""
    kinds = np.full(len(candidates), "other", dtype=object)
    xyz = candidates[["x", "y", "z"]].to_numpy(float)
    for kind in ("calcification", "cmb"):  # a bleed match wins over a nearby calcification
        lesions = truth[truth["kind"] == kind]
        match = match_detections(xyz, lesions[["x", "y", "z"]].to_numpy(float), lesions["diameter_mm"] / 2, voxel_size)
        kinds[match.pairs[:, 0]] = kind
    return kinds.astype(str)


def collect_patches(derivatives_dir: str | Path, truth_dir: str | Path, out_npz: str | Path,
                    paramagnetic_sign: int = -1, context_mm: float = 0.0) -> dict[str, int]:
    """Patches and labels of every simulated scan's candidates, in one compressed npz.

    Arrays: ``patches`` (n, 2 or 4, S, S, S) float16 (magnitude then phase, each with its wide
    view when ``context_mm``; phase zero without phase), ``features`` (n, F) with ``phase_dipole``
    last, ``label`` (1 = microbleed), ``kind``, ``has_phase``, ``scan``, and ``context_mm``.
    """
    derivatives_dir, truth_dir = Path(derivatives_dir), Path(truth_dir)
    parts: dict[str, list] = {"patches": [], "features": [], "label": [], "kind": [], "has_phase": [], "scan": []}
    for stage1 in sorted(derivatives_dir.rglob(f"*{STAGE1_TABLE}.tsv")):
        scan = ScanOutputs.find(stage1)
        table, patches, voxel = scan_patches(scan, paramagnetic_sign, context_mm)
        if scan.hpphase is None:
            patches = np.concatenate([patches, np.zeros_like(patches)], axis=1)
        truth = pd.read_csv(truth_dir / stage1.parent.relative_to(derivatives_dir) / f"{scan.prefix}{TRUTH_SUFFIX}",
                            sep="\t")
        kinds = label_candidates(table, truth, voxel)
        parts["patches"].append(patches.astype(np.float16))
        parts["features"].append(candidate_features(table, with_phase=True))  # phase_dipole 0 without phase
        parts["label"].append((kinds == "cmb").astype(np.int8))
        parts["kind"].append(kinds)
        parts["has_phase"].append(np.full(len(table), scan.hpphase is not None))
        parts["scan"].append(np.full(len(table), scan.prefix))
    if not parts["scan"]:
        raise FileNotFoundError(f"no stage-1 tables (*{STAGE1_TABLE}.tsv) under {derivatives_dir}")
    arrays = {key: np.concatenate(value) for key, value in parts.items()} | {"context_mm": np.float64(context_mm)}
    with atomic_path(out_npz) as tmp:
        np.savez_compressed(tmp, **arrays)
    counts = {"candidates": len(arrays["label"]), "microbleeds": int(arrays["label"].sum()),
            "calcifications": int((arrays["kind"] == "calcification").sum()), "scans": len(parts["scan"])}
    log.info("training examples: %s", counts)
    return counts


def augment(x: torch.Tensor, generator: torch.Generator, views: int = 1) -> torch.Tensor:
    """Random flips and 90-degree turns about B0 (the dipole pattern is unchanged by both),
    magnitude gain, gamma and noise, and phase gain (field strength x echo time) and noise; the
    same draw for a candidate's ``views`` (small and wide: the first ``views`` channels are magnitude)."""
    n = len(x)
    x = x.clone()

    def coin() -> torch.Tensor:
        return torch.rand(n, generator=generator) < 0.5

    for dim in (2, 3, 4):
        flip = coin()
        x[flip] = x[flip].flip(dim)
    turn = coin()
    x[turn] = x[turn].transpose(2, 3)
    shape = (n, 1, 1, 1, 1)
    mag = x[:, :views].clamp(min=0)
    gain = torch.empty(shape).uniform_(0.85, 1.15, generator=generator)
    gamma = torch.empty(shape).uniform_(0.8, 1.25, generator=generator)
    sigma = torch.empty(shape).uniform_(0.0, 0.08, generator=generator)
    x[:, :views] = gain * mag.pow(gamma) + sigma * torch.randn(mag.shape, generator=generator)
    if x.shape[1] > views:
        phase = x[:, views:]
        phase_gain = torch.exp(torch.empty(shape).uniform_(np.log(0.5), np.log(2.0), generator=generator))
        phase_sigma = torch.empty(shape).uniform_(0.0, 0.05, generator=generator)
        noisy = phase_gain * phase + phase_sigma * torch.randn(phase.shape, generator=generator)
        x[:, views:] = noisy.clamp(-1.0, 1.0)
    return x


def train_classifier(
    patches: npt.NDArray[np.floating],
    features: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    params: TrainParams = TrainParams(),
    device: str | torch.device = "cpu",
    mimics: npt.NDArray[np.bool_] | None = None,
    members: int = 1,
) -> tuple[CandidateNet, list[dict[str, float]]]:
    """Train a :class:`CandidateNet` of ``members`` networks, from seeds ``params.seed``,
    ``params.seed + 1``, ..., on patches (n, C, S, S, S; with the wide view of
    ``params.context_mm`` when that is not 0) and features (n, F). Deterministic for a seed on CPU.

    Each epoch sees every positive and ``negatives_per_positive`` times as many negatives drawn
    afresh, so the rare class is not drowned and the many easy negatives are still all seen.
    With ``params.mimics_every_epoch`` the negatives marked in ``mimics`` (the calcifications:
    a few hundred among tens of thousands of candidates, and the hardest to reject) join every epoch.
    """
    # Deterministic kernels (cuBLAS needs its workspace fixed before first use); on CUDA an op
    # without a deterministic kernel warns rather than stops the training.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    spec = ModelSpec(in_channels=patches.shape[1] // views(params.context_mm), widths=params.widths,
                     patch_size=patches.shape[-1], n_features=features.shape[1], members=members,
                     context_mm=params.context_mm)
    x_all = torch.from_numpy(np.asarray(patches, dtype=np.float32))
    f_all = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    shown = torch.zeros(len(y_all), dtype=torch.bool)
    if params.mimics_every_epoch and mimics is not None:
        shown = torch.from_numpy(np.asarray(mimics, dtype=bool)) & (y_all <= 0.5)
    positives = torch.nonzero(y_all > 0.5).squeeze(1)
    if len(positives) in (0, len(y_all)):
        raise ValueError("training needs both microbleed and non-microbleed candidates")
    always = torch.cat([positives, torch.nonzero(shown).squeeze(1)])
    negatives = torch.nonzero((y_all <= 0.5) & ~shown).squeeze(1)
    n_neg = min(len(negatives), params.negatives_per_positive * len(positives))
    steps = params.epochs * -(-(len(always) + n_neg) // params.batch_size)
    model = CandidateNet(spec)
    history = []
    for index in range(members):
        seed = params.seed + index
        torch.manual_seed(seed)
        member = ResidualNet(spec).to(device)
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.AdamW(member.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, params.learning_rate, total_steps=steps)
        for epoch in range(params.epochs):
            started = time.perf_counter()
            chosen = negatives[torch.randperm(len(negatives), generator=generator)[:n_neg]]
            order = torch.cat([always, chosen])[torch.randperm(len(always) + n_neg, generator=generator)]
            member.train()
            total = 0.0
            for batch in order.split(params.batch_size):
                x = augment(x_all[batch], generator, views(params.context_mm)).to(device)
                logits = member(x, f_all[batch].to(device))
                loss = F.binary_cross_entropy_with_logits(logits, y_all[batch].to(device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
            history.append({"member": index + 1, "epoch": epoch + 1, "examples": len(order),
                            "loss": total / len(order), "seconds": time.perf_counter() - started})
            log.info("member %d/%d, epoch %d/%d: loss %.4f (%.0f s)", index + 1, members, epoch + 1,
                     params.epochs, history[-1]["loss"], history[-1]["seconds"])
        model.members[index] = member
    return model.to(device).eval(), history


@dataclass(frozen=True)
class ScanScores:
    """One validation scan: its candidates' positions and probabilities (those not superseded by a
    more probable one nearby), and the true bleeds."""

    candidates_xyz: npt.NDArray[np.float64]
    probability: npt.NDArray[np.float64]
    truth_xyz: npt.NDArray[np.float64]
    truth_radius_mm: npt.NDArray[np.float64]
    voxel_size: npt.NDArray[np.float64]


def operating_curve(scans: list[ScanScores]) -> pd.DataFrame:
    """Sensitivity and FP per scan at every useful threshold (see :func:`froc_curve`)."""
    return froc_curve([s.probability for s in scans], [s.candidates_xyz for s in scans],
                      [s.truth_xyz for s in scans], [s.truth_radius_mm for s in scans],
                      [s.voxel_size for s in scans])


def choose_threshold(curve: pd.DataFrame, max_fp_per_scan: float) -> float:
    """The threshold of highest sensitivity with at most ``max_fp_per_scan``; of ties, the fewest FPs.

    When no threshold is that strict (a poor model), the one with the fewest false positives.
    """
    finite = curve[np.isfinite(curve["threshold"])]
    if finite.empty:
        raise ValueError("no candidate lies near a true microbleed: nothing to choose a threshold from")
    ok = finite[finite["fp_per_scan"] <= max_fp_per_scan]
    if ok.empty:
        log.warning("no threshold keeps false positives at or below %g per scan", max_fp_per_scan)
        return float(finite.sort_values(["fp_per_scan", "sensitivity"], ascending=[True, False]).iloc[0]["threshold"])
    best = ok.sort_values(["sensitivity", "fp_per_scan"], ascending=[False, True]).iloc[0]
    return float(best["threshold"])


def metrics_at(scans: list[ScanScores], threshold: float) -> dict[str, float]:
    """Lesion-level metrics of the calls a threshold makes."""
    matches = [
        match_detections(s.candidates_xyz[s.probability >= threshold], s.truth_xyz, s.truth_radius_mm, s.voxel_size)
        for s in scans
    ]
    return detection_metrics(matches)


def fit_platt(logits: npt.ArrayLike, target: npt.ArrayLike) -> tuple[float, float]:
    """The temperature T and shift b of least log loss of ``sigmoid(logit / T + b)`` (Platt scaling).

    On a validation cohort's thousands of candidates, where a temperature alone cannot both keep
    the clear calls near 1 and bring the uncertain middle (mostly mimics) down to its few bleeds."""
    z, y = np.asarray(logits, dtype=float), np.asarray(target, dtype=float)

    def loss(wb: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        u = wb[0] * z + wb[1]
        error = special.expit(u) - y
        return float(np.mean(np.logaddexp(0.0, u) - y * u)), np.array([np.mean(error * z), np.mean(error)])

    w, b = optimize.minimize(loss, np.array([1.0, 0.0]), jac=True, method="BFGS").x
    return float(1.0 / np.clip(w, 0.25, 4.0)), float(b)


def logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """log(p / (1 - p)), with p kept off 0 and 1 (float32 sigmoids reach both)."""
    return special.logit(np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7))


def recalibrated(scans: list[ScanScores], temperature: float, shift: float = 0.0) -> list[ScanScores]:
    """The scans with each probability p replaced by sigmoid(logit(p) / temperature + shift)."""
    return [dataclasses.replace(s, probability=special.expit(logit(s.probability) / temperature + shift)) for s in scans]


def train_models(
    patches_npz: str | Path, out_phase: str | Path, out_magnitude: str | Path, out_history: str | Path,
    params: TrainParams, members: Mapping[str, int], device: str | torch.device = "cpu",
) -> None:
    """Train the phase model (scans with phase) and the magnitude model (every scan, magnitude
    only), of ``members[variant]`` networks each."""
    data = np.load(patches_npz)
    patches, features, labels, has_phase = data["patches"], data["features"], data["label"], data["has_phase"]
    if float(data["context_mm"]) != params.context_mm:
        raise ValueError(f"{patches_npz} has wide views of {float(data['context_mm'])} mm, the settings ask for "
                         f"{params.context_mm} mm: collect the patches again")
    mimics = data["kind"] == "calcification"
    history = {}
    for variant, x, f, y, m, out in (
        ("phase", patches[has_phase], features[has_phase], labels[has_phase], mimics[has_phase], out_phase),
        ("magnitude", patches[:, :views(params.context_mm)], features[:, : n_features(with_phase=False)], labels, mimics, out_magnitude),
    ):
        started = time.perf_counter()
        model, epochs = train_classifier(x, f, y, params, device, mimics=m, members=members[variant])
        save_model(model, out)
        history[variant] = {"examples": len(y), "microbleeds": int(y.sum()), "epochs": epochs,
                            "seconds": round(time.perf_counter() - started, 1)}
        log.info("%s model: %d examples (%d microbleeds), %.0f s", variant, len(y), int(y.sum()),
                 history[variant]["seconds"])
    write_json(history, out_history)


def score_scans(
    stage1_dir: str | Path, truth_dir: str | Path, models: dict[str, CandidateNet], paramagnetic_sign: int,
    device: str | torch.device = "cpu", mirror_veto: Mapping[str, float] | None = None,
) -> dict[str, dict[str, list[ScanScores]]]:
    """Every validation scan scored by each model, as ``{model: {group: scans}}``.

    Groups: ``phase`` (scans with phase) and ``magnitude_only``. The phase model scores only
    scans with phase; the magnitude model scores every scan from its magnitude alone. A model
    named in ``mirror_veto`` calls none of the candidates that veto rules out.
    """
    stage1_dir, truth_dir = Path(stage1_dir), Path(truth_dir)
    scored: dict[str, dict[str, list[ScanScores]]] = {name: {"phase": [], "magnitude_only": []} for name in models}
    for stage1 in sorted(stage1_dir.rglob(f"*{STAGE1_TABLE}.tsv")):
        scan = ScanOutputs.find(stage1)
        by_extent = {}  # patches by wide-view extent, made once for the models that share it
        for model in models.values():
            if model.spec.context_mm not in by_extent:
                table, by_extent[model.spec.context_mm], voxel = scan_patches(scan, paramagnetic_sign,
                                                                               model.spec.context_mm)
        truth = pd.read_csv(truth_dir / stage1.parent.relative_to(stage1_dir) / f"{scan.prefix}{TRUTH_SUFFIX}", sep="\t")
        truth = truth[truth["kind"] == "cmb"]
        truth_xyz, truth_radius = truth[["x", "y", "z"]].to_numpy(float), truth["diameter_mm"].to_numpy(float) / 2
        xyz = table[["x", "y", "z"]].to_numpy(float)
        group = "phase" if scan.hpphase is not None else "magnitude_only"
        for name, model in models.items():
            if model.spec.in_channels == 2 and scan.hpphase is None:
                continue
            with_phase = model.spec.in_channels == 2
            probability = Classifier(model, 0.5, name).predict(
                by_extent[model.spec.context_mm][:, : model.spec.input_channels], candidate_features(table, with_phase),
                device)
            can_call = standing(xyz, probability, table["mirror_darkness"], (mirror_veto or {}).get(name))  # as called
            scored[name][group].append(ScanScores(xyz[can_call], probability[can_call], truth_xyz, truth_radius, voxel))
    return scored


def _group_report(scans: list[ScanScores], threshold: float) -> dict:
    curve = operating_curve(scans)
    is_bleed = [near_truth(s.candidates_xyz, s.truth_xyz, s.truth_radius_mm, s.voxel_size) for s in scans]
    return {
        "scans": len(scans),
        "at_threshold": metrics_at(scans, threshold),
        "calibration": calibration(np.concatenate([s.probability for s in scans]), np.concatenate(is_bleed)),
        "froc_sensitivity_at_fp_per_scan": {
            str(rate): float(curve.loc[curve["fp_per_scan"] <= rate, "sensitivity"].max()) for rate in FROC_FP_RATES
        },
        "froc_curve": curve.loc[np.isfinite(curve["threshold"]), ["fp_per_scan", "sensitivity"]].to_numpy().tolist(),
    }


def validate_models(
    model_paths: dict[str, str | Path], stage1_dir: str | Path, truth_dir: str | Path, max_fp_per_scan: dict[str, float],
    paramagnetic_sign: int, device: str | torch.device = "cpu", mirror_veto: Mapping[str, float] | None = None,
) -> dict:
    """Each model's threshold and figures on the validation cohort (the body of the model card),
    with the ``mirror_veto`` of the models named in it in place.

    The phase model's threshold is chosen on the scans with phase; the magnitude model's on every
    scan read as magnitude only (more scans, so a steadier choice), and it is reported for the
    scans that really lack phase as well.
    """
    models = {name: load_model(path) for name, path in model_paths.items()}
    mirror_veto = dict(mirror_veto or {})
    scored = score_scans(stage1_dir, truth_dir, models, paramagnetic_sign, device, mirror_veto)
    report = {}
    for name, raw in scored.items():
        pooled = raw["phase"] + raw["magnitude_only"]
        is_bleed = np.concatenate([near_truth(s.candidates_xyz, s.truth_xyz, s.truth_radius_mm, s.voxel_size)
                                   for s in pooled])
        probability = np.concatenate([s.probability for s in pooled])
        temperature, shift = fit_platt(logit(probability), is_bleed)
        groups = {group: recalibrated(scans, temperature, shift) for group, scans in raw.items()}
        pooled = groups["phase"] + groups["magnitude_only"]
        threshold = choose_threshold(operating_curve(pooled), max_fp_per_scan[name])
        report[name] = {
            "weights": Path(model_paths[name]).name,
            "in_channels": models[name].spec.in_channels,
            "context_mm": models[name].spec.context_mm,
            "temperature": temperature,
            "logit_shift": shift,
            "calibration_fitted_for": "probability = sigmoid(mean logit / temperature + logit_shift) of least log loss "
                                      "over the standing validation candidates (bleed or not)",
            "ece_above_0.1_before_calibration": calibration(probability, is_bleed)["ece_above_0.1"],
            "threshold": threshold,
            "threshold_chosen_for": f"highest sensitivity at <= {max_fp_per_scan[name]} false positives per scan",
            **({"mirror_veto": mirror_veto[name]} if name in mirror_veto else {}),
            "validation": {group: _group_report(scans, threshold) for group, scans in
                           {**({"all": pooled} if all(groups.values()) else {}), **groups}.items() if scans},
        }
    return report
