"""Adapting the stage-2 classifier to a site from its raters' verdicts (``cmbflow finetune``).

A rated scan is labelled throughout: its accepted calls and the bleeds its raters marked missed
are microbleeds; its rejected calls, and every candidate that was not called and that no rater
marked missed, are not; unsure calls are left out. From those labels, starting from the model
that made the calls (or another):

- **fine-tuning**: a few epochs from the base weights on the site's candidates, every epoch half
  replay of simulated scans (made at run time, nothing is downloaded) so that what the model
  learned elsewhere is not forgotten. Of the site's other candidates, those the base model finds
  hard to reject (its false calls and near misses) are drawn more than the easy ones.
- **recalibration**: a temperature fitted to the ratings, then the most sensitive threshold that
  keeps at most a third of the base model's false calls at the site (or the shipped model's
  budget, if more), never below the base model's sensitivity on the rated scans.

Both are cross-validated over whole rated scans: each is scored by a model that did not see it,
and the model card gives the figures before and after. The temperature and threshold are those
chosen on these cross-validated scores; the weights written are tuned on every rated scan.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.nn import functional as F

from cmbflow import __version__
from cmbflow.config import CandidateParams, PhaseConfig
from cmbflow.derivatives import BRAIN_MASK, HPPHASE, MNI_XFM, N4_MAGNITUDE, SWI
from cmbflow.detections import SAME_LESION_MM, standing
from cmbflow.errors import InputError
from cmbflow.evaluate import match_detections
from cmbflow.image import write_json
from cmbflow.model import MODEL_CARD, CandidateNet, ModelSpec, load_model, packaged_model_dir, save_model, sha256
from cmbflow.patches import candidate_features, views
from cmbflow.ratings import rate_subject, ratings_files
from cmbflow.training import (
    ScanOutputs,
    ScanScores,
    augment,
    collect_patches,
    metrics_at,
    operating_curve,
    scan_patches,
)

log = logging.getLogger(__name__)

#: Radius given to a bleed a rater marked missed (a click, no size): a typical 3 mm microbleed.
MISSED_RADIUS_MM = 1.5
#: The variants and the rated scans each is tuned and scored on (cmbflow.model.VARIANTS).
_SCANS_OF = {"phase": lambda scan: scan.has_phase, "magnitude": lambda scan: True}


@dataclass(frozen=True)
class FinetuneParams:
    """How much the site's ratings must hold, and how the model is tuned on them."""

    min_scans: int = 3
    min_microbleeds: int = 10
    folds: int = 5
    epochs: int = 12
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    fp_fraction: float = 1 / 3  # the site model may keep this fraction of the base model's false calls ...
    design_fp_per_scan: tuple[float, float] = (0.5, 1.0)  # ... or the shipped budget (phase, magnitude) if more
    hard_probability: float = 0.05  # site negatives the base model gives at least this are "hard"
    hard_per_positive: int = 8  # of the hard site negatives, drawn afresh each epoch
    negatives_per_positive: int = 4  # of the easier site negatives, likewise
    replay_scans: int = 3
    replay_preset: str = "training"
    seed: int = 0


@dataclass(eq=False)
class RatedScan:
    """One rated scan's candidates: patches (n, 2, S, S, S; the phase channel zero without phase),
    stage-1 features (n, F, ``phase_dipole`` last), ``target`` (1 microbleed, 0 not, -1 left out),
    and the rated microbleeds against which calls are scored."""

    label: str
    has_phase: bool
    xyz: npt.NDArray[np.float64]
    patches: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]
    target: npt.NDArray[np.int8]
    scored: npt.NDArray[np.bool_]  # not an unsure call (nor a duplicate of one)
    mirror_darkness: npt.NDArray[np.float64]  # for a model's mirror veto (cmbflow.detections.mirror_vetoed)
    bleeds_xyz: npt.NDArray[np.float64]
    bleeds_radius_mm: npt.NDArray[np.float64]
    voxel_size: npt.NDArray[np.float64]
    counts: dict[str, int] = field(default_factory=dict)


def label_rated_candidates(
    candidates: pd.DataFrame, ratings: Sequence[str | None], missed_xyz: npt.ArrayLike, voxel_size: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Targets of a rated scan's candidates (the workflow's candidates table, its calls in
    ``is_cmb`` in the order of the calls table, ``ratings`` one consensus per call).

    Returns the targets (1, 0, or -1: an unsure or unrated call, or a duplicate within
    :data:`SAME_LESION_MM` of a microbleed or of such a call, whose label would only teach the
    network to doubt a bleed), which candidates are scored, and the rated microbleeds' positions
    and radii.
    """
    xyz = candidates[["x", "y", "z"]].to_numpy(float)
    calls = np.flatnonzero(candidates["is_cmb"].to_numpy(bool))
    ratings = np.asarray(list(ratings), dtype=object)
    target = np.zeros(len(candidates), dtype=np.int8)
    target[calls[ratings == "accept"]] = 1
    doubtful = calls[(ratings != "accept") & (ratings != "reject")]
    missed_xyz = np.asarray(missed_xyz, dtype=float).reshape(-1, 3)
    uncalled = np.setdiff1d(np.arange(len(candidates)), calls)
    found = match_detections(xyz[uncalled], missed_xyz, MISSED_RADIUS_MM, voxel_size).pairs
    target[uncalled[found[:, 0]]] = 1

    def near(anchors: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        if not len(anchors):
            return np.zeros(len(candidates), dtype=bool)
        return (np.linalg.norm(xyz[:, None] - xyz[anchors][None], axis=2) <= SAME_LESION_MM).any(axis=1)

    positives = np.flatnonzero(target == 1)
    scored = ~near(doubtful)
    target[(near(positives) & (target == 0)) | ~scored] = -1
    radius = candidates["radius_mm"].to_numpy(float)
    bleeds_xyz = np.concatenate([xyz[calls[ratings == "accept"]], missed_xyz])
    bleeds_radius = np.concatenate([radius[calls[ratings == "accept"]], np.full(len(missed_xyz), MISSED_RADIUS_MM)])
    return target, scored, bleeds_xyz, bleeds_radius


def _paramagnetic_sign(anat: Path, prefix: str) -> int:
    """The phase sign the run was configured with, from its SWI sidecar (the default without one)."""
    swi = anat / f"{prefix}{SWI}.json"
    phase = json.loads(swi.read_text()).get("ParamagneticPhase", "negative") if swi.exists() else "negative"
    return -1 if phase == "negative" else 1


def load_rated_scans(output_dir: str | Path, ratings_dir: str | Path, context_mm: float = 0.0) -> list[RatedScan]:
    """Every scan of a finished cmbflow output that has ratings, with its candidates labelled and
    its patches as a model with wide views of ``context_mm`` reads them."""
    scans = []
    for calls_path in sorted(Path(output_dir).glob("sub-*/**/anat/*_desc-cmb_detections.tsv")):
        prefix = calls_path.name.removesuffix("_desc-cmb_detections.tsv")
        files = ratings_files(ratings_dir, prefix)
        if not files:
            continue
        anat = calls_path.parent
        hpphase = anat / f"{prefix}{HPPHASE}.nii.gz"
        scan = ScanOutputs(prefix, anat / f"{prefix}_desc-candidates_detections.tsv",
                           anat / f"{prefix}{N4_MAGNITUDE}.nii.gz", anat / f"{prefix}{BRAIN_MASK}.nii.gz",
                           hpphase if hpphase.exists() else None, anat.parent / "xfm" / f"{prefix}{MNI_XFM}")
        candidates, patches, voxel = scan_patches(scan, _paramagnetic_sign(anat, prefix), context_mm)
        rated = rate_subject(pd.read_csv(calls_path, sep="\t"), files, prefix)
        target, scored, bleeds_xyz, bleeds_radius = label_rated_candidates(
            candidates, rated.ratings, rated.missed[["x", "y", "z"]].to_numpy(float), voxel)
        xyz = candidates[["x", "y", "z"]].to_numpy(float)
        if scan.hpphase is None:
            patches = np.concatenate([patches, np.zeros_like(patches)], axis=1)
        counts = {verdict: int(sum(r == verdict for r in rated.ratings)) for verdict in ("accept", "reject", "unsure")}
        counts |= {"missed": len(rated.missed), "microbleeds": int((target == 1).sum())}
        scans.append(RatedScan(prefix, scan.hpphase is not None, xyz, patches, candidate_features(candidates, with_phase=True),
                               target, scored, candidates["mirror_darkness"].to_numpy(float), bleeds_xyz,
                               bleeds_radius, voxel, counts))
    return scans


def check_enough(scans: Sequence[RatedScan], ratings_dir: str | Path, params: FinetuneParams) -> None:
    """Refuse, in one line, ratings too few to tune on."""
    bleeds = sum(scan.counts["microbleeds"] for scan in scans)
    if len(scans) < params.min_scans or bleeds < params.min_microbleeds:
        raise InputError(
            f"{len(scans)} rated scans with {bleeds} rated microbleeds are too few to tune on", path=ratings_dir,
            fix=f"rate at least {params.min_scans} scans with {params.min_microbleeds} microbleeds in all (accepted "
            "calls, and missed bleeds that stage 1 found as candidates)")


def replay_examples(work_dir: Path, params: FinetuneParams, context_mm: float = 0.0) -> dict[str, npt.NDArray]:
    """Patches of freshly simulated scans through the workflow's stage 1 (cmbflow.training)."""
    from cmbflow.simulate import simulate_cohort
    from cmbflow.stages import run_stage1

    bids = work_dir / "bids"
    labels = simulate_cohort(bids, params.replay_scans, params.seed + 7000, preset=params.replay_preset)
    for label in labels:
        run_stage1(bids, label, work_dir / "stage1", "last", PhaseConfig(), CandidateParams(), "cpu")
    collect_patches(work_dir / "stage1", bids / "derivatives" / "simulation", work_dir / "replay.npz",
                    context_mm=context_mm)
    with np.load(work_dir / "replay.npz") as data:
        return {key: data[key] for key in ("patches", "features", "label", "has_phase")}


@dataclass(frozen=True)
class Examples:
    """Classifier inputs for one variant, with the targets (-1 rows removed)."""

    patches: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]
    target: npt.NDArray[np.float32]

    @classmethod
    def of(cls, patches: npt.NDArray, features: npt.NDArray, target: npt.NDArray, spec: ModelSpec) -> Examples:
        keep = np.asarray(target) >= 0
        return cls(np.asarray(patches[keep][:, :spec.input_channels], dtype=np.float32),
                   np.asarray(features[keep][:, :spec.n_features], dtype=np.float32),
                   np.asarray(target[keep], dtype=np.float32))


def site_examples(scans: Sequence[RatedScan], spec: ModelSpec) -> Examples:
    return Examples.of(np.concatenate([s.patches for s in scans]), np.concatenate([s.features for s in scans]),
                       np.concatenate([s.target for s in scans]), spec)


def mean_logits(model: CandidateNet, examples: Examples, batch_size: int = 256) -> npt.NDArray[np.float64]:
    """The members' mean logit of each example."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(examples.target), batch_size):
            x = torch.from_numpy(examples.patches[i:i + batch_size])
            f = torch.from_numpy(examples.features[i:i + batch_size])
            out.append(model.member_logits(x, f).mean(dim=0))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def tune_model(base: CandidateNet, site: Examples, hard: npt.NDArray[np.bool_], replay: Examples,
               params: FinetuneParams) -> CandidateNet:
    """Each member fine-tuned from its base weights. Every epoch: the site's microbleeds, hard and
    easier site negatives drawn afresh (``hard_per_positive`` and ``negatives_per_positive`` per
    microbleed), and as many replay examples again (microbleeds and other candidates, 1 to
    ``negatives_per_positive``). Deterministic on CPU."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = CandidateNet(base.spec)
    model.load_state_dict(base.state_dict())
    x_site, f_site, y_site = (torch.from_numpy(a) for a in (site.patches, site.features, site.target))
    x_replay, f_replay, y_replay = (torch.from_numpy(a) for a in (replay.patches, replay.features, replay.target))
    bleeds = torch.from_numpy(np.flatnonzero(site.target > 0.5))
    hard_ones, easy = (torch.from_numpy(np.flatnonzero((site.target < 0.5) & is_hard)) for is_hard in (hard, ~hard))
    n_hard = min(len(hard_ones), params.hard_per_positive * max(len(bleeds), 1))
    n_easy = min(len(easy), params.negatives_per_positive * max(len(bleeds), 1))
    n_replay = min(len(y_replay), len(bleeds) + n_hard + n_easy)
    replay_bleeds, replay_others = (torch.from_numpy(np.flatnonzero(is_bleed)) for is_bleed in
                                    (replay.target > 0.5, replay.target < 0.5))
    n_replay_bleeds = min(len(replay_bleeds), n_replay // (1 + params.negatives_per_positive))
    for index, member in enumerate(model.members):
        generator = torch.Generator().manual_seed(params.seed + index)
        torch.manual_seed(params.seed + index)
        optimiser = torch.optim.AdamW(member.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
        steps = params.epochs * -(-(len(bleeds) + n_hard + n_easy + n_replay) // params.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        for _ in range(params.epochs):
            chosen = torch.cat([bleeds, hard_ones[torch.randperm(len(hard_ones), generator=generator)[:n_hard]],
                                easy[torch.randperm(len(easy), generator=generator)[:n_easy]]])
            replayed = torch.cat([
                replay_bleeds[torch.randperm(len(replay_bleeds), generator=generator)[:n_replay_bleeds]],
                replay_others[torch.randperm(len(replay_others), generator=generator)[:n_replay - n_replay_bleeds]]])
            x = torch.cat([x_site[chosen], x_replay[replayed]])
            f = torch.cat([f_site[chosen], f_replay[replayed]])
            y = torch.cat([y_site[chosen], y_replay[replayed]])
            member.train()
            for batch in torch.randperm(len(y), generator=generator).split(params.batch_size):
                loss = F.binary_cross_entropy_with_logits(member(augment(x[batch], generator, views(base.spec.context_mm)), f[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    return model.eval()


def fit_temperature(logits: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """The temperature (0.25-4, on a log grid) that minimises the log loss of ``sigmoid(logit / T)``."""
    logits, target = np.asarray(logits, dtype=float), np.asarray(target, dtype=float)
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 81))
    loss = [np.mean(np.logaddexp(0.0, z) - target * z) for z in (logits[None, :] / grid[:, None])]
    return float(grid[int(np.argmin(loss))])


def choose_site_threshold(scans: Sequence[ScanScores], min_sensitivity: float, max_fp_per_scan: float) -> float:
    """The lowest threshold with at most ``max_fp_per_scan`` false calls per scan (the most
    sensitive within that budget, and the budget spent: on new scans a threshold at its edge finds
    more than the highest one of the same sensitivity here), if it reaches ``min_sensitivity``;
    else the one with the fewest false calls that does (when none does, the most sensitive)."""
    curve = operating_curve(list(scans))
    curve = curve[np.isfinite(curve["threshold"])].reset_index(drop=True)  # thresholds descending
    within = np.flatnonzero(curve["fp_per_scan"].to_numpy() <= max_fp_per_scan)
    if within.size and curve["sensitivity"][within[-1]] >= min_sensitivity - 1e-9:
        row = within[-1]
        floor = curve["threshold"][row + 1] if row + 1 < len(curve) else 0.0  # where the next bleed enters
        spare = int(np.floor((max_fp_per_scan - curve["fp_per_scan"][row]) * len(scans) + 1e-9))
        return _spend(scans, float(curve["threshold"][row]), float(floor), spare)
    ok = curve[curve["sensitivity"] >= min_sensitivity - 1e-9]
    if ok.empty:
        ok = curve[curve["sensitivity"] == curve["sensitivity"].max()]
    return float(ok.sort_values(["fp_per_scan", "sensitivity"], ascending=[True, False]).iloc[0]["threshold"])


def _spend(scans: Sequence[ScanScores], threshold: float, floor: float, spare: int) -> float:
    """``threshold`` lowered to admit up to ``spare`` more candidates, staying above ``floor``."""
    below = np.sort(np.concatenate([s.probability[(s.probability < threshold) & (s.probability > floor)]
                                    for s in scans] + [np.zeros(0)]))[::-1]
    if spare <= 0 or not len(below):
        return threshold
    return float(below[min(spare, len(below)) - 1])


def _scores(scan: RatedScan, probability: npt.NDArray[np.float64], mirror_veto: float | None) -> ScanScores:
    """A scan's candidates as the workflow calls them (duplicates superseded, none the mirror veto
    rules out), against its rated bleeds."""
    xyz, p = scan.xyz[scan.scored], probability[scan.scored]
    can_call = standing(xyz, p, scan.mirror_darkness[scan.scored], mirror_veto)
    return ScanScores(xyz[can_call], p[can_call], scan.bleeds_xyz, scan.bleeds_radius_mm, scan.voxel_size)


def _figures(scans: list[ScanScores], threshold: float) -> dict[str, float]:
    found = metrics_at(scans, threshold)
    return {key: round(float(found[key]), 4) for key in ("scans", "lesions", "true_positives", "false_positives",
                                                        "sensitivity", "precision", "fp_per_scan")}


def _logits(model: CandidateNet, scan: RatedScan) -> npt.NDArray[np.float64]:
    return mean_logits(model, Examples.of(scan.patches, scan.features, np.zeros(len(scan.xyz)), model.spec))


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-z))


def _hard(scans: Sequence[RatedScan], base_probability: dict[str, npt.NDArray], params: FinetuneParams) -> npt.NDArray:
    """Which of the scans' labelled candidates the base model finds hard to reject (or is not sure of)."""
    return np.concatenate([base_probability[s.label][s.target >= 0] >= params.hard_probability for s in scans])


def tune_variant(base: CandidateNet, base_entry: dict, scans: list[RatedScan], replay: Examples, variant: str,
                 params: FinetuneParams) -> tuple[CandidateNet, dict]:
    """Cross-validated fine-tuning and recalibration of one variant (``base_entry``: its base
    model card's); the model tuned on every scan, and its card entry."""
    base_threshold, base_temperature = float(base_entry["threshold"]), float(base_entry.get("temperature", 1.0))
    base_shift = float(base_entry.get("logit_shift", 0.0))
    veto = base_entry.get("mirror_veto")
    base_probability = {s.label: _sigmoid(_logits(base, s) / base_temperature + base_shift) for s in scans}
    folds = [scans[k::min(params.folds, len(scans))] for k in range(min(params.folds, len(scans)))]
    logits = {}  # each scan's, from the model tuned without it
    for k, fold in enumerate(folds):
        training = [s for s in scans if s not in fold]
        model = tune_model(base, site_examples(training, base.spec), _hard(training, base_probability, params),
                           replay, params)
        logits |= {scan.label: _logits(model, scan) for scan in fold}
        log.info("%s model: fold %d/%d tuned on %d scans", variant, k + 1, len(folds), len(training))
    temperature = fit_temperature(np.concatenate([logits[s.label][s.target >= 0] for s in scans]),
                                  np.concatenate([s.target[s.target >= 0] for s in scans]))
    tuned = {s.label: _scores(s, _sigmoid(logits[s.label] / temperature), veto) for s in scans}
    before = {s.label: _scores(s, base_probability[s.label], veto) for s in scans}
    design = params.design_fp_per_scan[0 if variant == "phase" else 1]

    def threshold_for(labels: list[str]) -> tuple[float, dict]:
        base = metrics_at([before[label] for label in labels], base_threshold)
        budget = max(design, params.fp_fraction * base["fp_per_scan"])
        return choose_site_threshold([tuned[label] for label in labels], base["sensitivity"], budget), base

    threshold, base_figures = threshold_for([s.label for s in scans])
    per_fold = []
    for k, fold in enumerate(folds):
        fold_threshold, _ = threshold_for([s.label for s in scans if s not in fold])
        per_fold.append({"scans": [s.label for s in fold], "threshold": round(fold_threshold, 4),
                         "before": _figures([before[s.label] for s in fold], base_threshold),
                         "after": _figures([tuned[s.label] for s in fold], fold_threshold)})
    pooled = {when: {key: sum(f[when][key] for f in per_fold) for key in ("scans", "lesions", "true_positives",
                                                                         "false_positives")} for when in ("before", "after")}
    for figures in pooled.values():
        figures["sensitivity"] = round(figures["true_positives"] / figures["lesions"], 4) if figures["lesions"] else None
        figures["fp_per_scan"] = round(figures["false_positives"] / figures["scans"], 4)
    final = tune_model(base, site_examples(scans, base.spec), _hard(scans, base_probability, params), replay, params)
    entry = {"in_channels": base.spec.in_channels, "threshold": threshold, "temperature": temperature,
             **({"mirror_veto": veto} if veto is not None else {}),
             "threshold_chosen_for": "the lowest threshold with at most "
             f"{max(design, params.fp_fraction * base_figures['fp_per_scan']):.2f} false calls per scan (a third of "
             f"the base model's {base_figures['fp_per_scan']:.2f} on the rated scans, or {design} if more), unless "
             f"below the base model's sensitivity ({base_figures['sensitivity']:.3f}): then the fewest false calls "
             "at that sensitivity; on cross-validated scores",
             "cross_validation": {"folds": len(folds), "before": pooled["before"], "after": pooled["after"],
                                  "per_fold": per_fold, "base_threshold": base_threshold}}
    return final, entry


def finetune(output_dir: str | Path, ratings_dir: str | Path, model_dir: str | Path, base_dir: str | Path | None = None,
             params: FinetuneParams = FinetuneParams()) -> dict:
    """Write a site's model folder (usable as ``classifier.model_dir``) and return its card."""
    base_dir = Path(base_dir) if base_dir else packaged_model_dir()
    model_dir = Path(model_dir)
    for protected in {packaged_model_dir().resolve(), base_dir.resolve()}:
        if model_dir.resolve() == protected or protected in model_dir.resolve().parents:
            raise InputError("is the model fine-tuning starts from, which is never overwritten", path=model_dir,
                             fix="give a new folder")
    if model_dir.exists() and any(model_dir.iterdir()):
        raise InputError("exists and is not empty; a model is never overwritten", path=model_dir,
                         fix="give a new folder, or remove this one")
    base_card = json.loads((base_dir / MODEL_CARD).read_text())
    bases = {variant: load_model(base_dir / entry["weights"]) for variant, entry in base_card["models"].items()}
    context_mm = bases["phase"].spec.context_mm  # both variants are trained with the same views
    scans = load_rated_scans(output_dir, ratings_dir, context_mm)
    check_enough(scans, ratings_dir, params)
    tuned_variants = [v for v in ("phase", "magnitude") if (v == "phase" and any(s.has_phase for s in scans))
                      or (v == "magnitude" and not all(s.has_phase for s in scans))]
    with tempfile.TemporaryDirectory(prefix="cmbflow-finetune-") as work:
        replay = replay_examples(Path(work), params, context_mm)
        staging = Path(work) / "model"
        staging.mkdir()
        models = {}
        for variant, entry in base_card["models"].items():
            weights = base_dir / entry["weights"]
            variant_scans = [s for s in scans if _SCANS_OF[variant](s)]
            if variant not in tuned_variants:
                shutil.copy2(weights, staging / entry["weights"])
                models[variant] = {**entry, "tuned": False, "why_not": "no rated scan would use it"}
                continue
            has = replay["has_phase"] if variant == "phase" else np.ones(len(replay["label"]), dtype=bool)
            replayed = Examples.of(replay["patches"][has], replay["features"][has], replay["label"][has],
                                   bases[variant].spec)
            model, tuned = tune_variant(bases[variant], entry, variant_scans, replayed, variant, params)
            save_model(model, staging / entry["weights"])
            models[variant] = {"weights": entry["weights"], **tuned, "tuned": True}
        card = {
            "name": f"{base_card.get('name', 'cmbflow CandidateNet')}, fine-tuned to a site",
            "created": date.today().isoformat(),
            "code_version": __version__,
            "machine": f"{platform.machine()}, {platform.system()}",
            "base_model": {"dir": str(base_dir), "name": base_card.get("name"),
                           "weights_sha256": {v: sha256(base_dir / e["weights"]) for v, e in base_card["models"].items()}},
            "tuned_on": {"output_dir": str(Path(output_dir).resolve()), "ratings_dir": str(Path(ratings_dir).resolve()),
                         "scans": {s.label: s.counts for s in scans},
                         "replay": {"scans": params.replay_scans, "preset": params.replay_preset,
                                    "seed": params.seed + 7000, "examples": int(len(replay["label"]))}},
            "params": asdict(params),
            "models": models,
            "weights_sha256": {v: sha256(staging / e["weights"]) for v, e in models.items()},
            "intended_use": "this site's scans, of the protocol of the rated scans; research use",
        }
        write_json(card, staging / MODEL_CARD)
        (staging / "MODEL_CARD.md").write_text(card_markdown(card))
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        if model_dir.exists():
            model_dir.rmdir()
        shutil.copytree(staging, model_dir)
    return card


def card_markdown(card: dict) -> str:
    """The fine-tuned model's card for people: what it was tuned on and the figures before and after."""
    scans = card["tuned_on"]["scans"]
    total = {key: sum(c[key] for c in scans.values()) for key in ("accept", "reject", "unsure", "missed", "microbleeds")}
    lines = [f"# {card['name']}", "",
             f"Created {card['created']} by cmbflow {card['code_version']} (`cmbflow finetune`) from "
             f"`{card['base_model']['dir']}`.", "",
             f"Tuned on {len(scans)} rated scans of `{card['tuned_on']['output_dir']}` (ratings: "
             f"`{card['tuned_on']['ratings_dir']}`): {total['accept']} accepted, {total['reject']} rejected, "
             f"{total['unsure']} unsure calls, {total['missed']} missed bleeds; {total['microbleeds']} microbleeds among "
             f"the candidates. Replay: {card['tuned_on']['replay']['scans']} simulated scans "
             f"({card['tuned_on']['replay']['preset']} preset), {card['tuned_on']['replay']['examples']} candidates.", "",
             "| model | tuned | threshold | temperature | CV sensitivity before → after | CV FP/scan before → after |",
             "|---|---|---|---|---|---|"]
    for variant, entry in card["models"].items():
        if not entry.get("tuned"):
            lines.append(f"| {variant} | no ({entry['why_not']}) | {entry['threshold']:.3f} | "
                         f"{entry.get('temperature', 1.0):.2f} | | |")
            continue
        cv = entry["cross_validation"]
        lines.append(f"| {variant} | yes | {entry['threshold']:.3f} | {entry['temperature']:.2f} | "
                     f"{cv['before']['sensitivity']} → {cv['after']['sensitivity']} | "
                     f"{cv['before']['fp_per_scan']} → {cv['after']['fp_per_scan']} |")
    lines += ["", "Cross-validated over whole rated scans: each scan scored by a model tuned without it, at a "
              "threshold chosen without it. Before: the base model at its own threshold."]
    lines += [f"The {variant} model's threshold: {entry['threshold_chosen_for']}." for variant, entry in
              card["models"].items() if entry.get("tuned")]
    lines += ["",
              f"Intended use: {card['intended_use']}. Not a medical device.", ""]
    return "\n".join(lines)
