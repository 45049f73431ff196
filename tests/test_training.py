"""Training pieces: labels from truth, augmentation, determinism, threshold choice, model I/O."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cmbflow.config import TrainParams
from cmbflow.model import CandidateNet, ModelSpec, load_model, save_model
from cmbflow.training import (
    ScanScores,
    augment,
    choose_threshold,
    fit_platt,
    label_candidates,
    recalibrated,
    train_classifier,
    train_models,
)

VOXEL = (1.0, 1.0, 2.0)


def test_labels_match_bleeds_one_to_one_and_name_calcifications():
    truth = pd.DataFrame({"x": [0.0, 30.0], "y": [0.0, 0.0], "z": [0.0, 0.0], "kind": ["cmb", "calcification"],
                          "diameter_mm": [4.0, 3.0]})
    candidates = pd.DataFrame({"x": [0.5, 1.0, 30.5, -40.0], "y": [0.0] * 4, "z": [0.0] * 4})
    assert label_candidates(candidates, truth, VOXEL).tolist() == ["cmb", "other", "calcification", "other"]


def test_threshold_is_most_sensitive_within_the_false_positive_budget():
    curve = pd.DataFrame({"threshold": [np.inf, 0.9, 0.7, 0.4, 0.1], "sensitivity": [0, 0.5, 0.8, 0.8, 1.0],
                          "fp_per_scan": [0, 0.1, 0.3, 0.45, 2.0]})
    assert choose_threshold(curve, 0.5) == 0.7  # 0.4 is as sensitive with more false positives
    assert choose_threshold(curve, 5.0) == 0.1
    assert choose_threshold(curve, 0.05) == 0.9  # nothing that strict: the fewest false positives


def test_augmentation_keeps_shape_and_is_reproducible():
    x = torch.rand(6, 2, 16, 16, 16) * 2 - 1
    first = augment(x, torch.Generator().manual_seed(1))
    again = augment(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and torch.equal(first, again)
    assert not torch.equal(first, x) and first[:, 1].abs().max() <= 1.0


def test_both_views_of_a_candidate_turn_together():
    x = torch.rand(6, 4, 16, 16, 16)  # magnitude small, wide; phase small, wide
    x[:, 1] = x[:, 0]
    x[:, 3] = x[:, 2] * 2 - 1
    out = augment(x, torch.Generator().manual_seed(3), views=2)
    # Noise is drawn per voxel, the flips, turns and gains once per candidate.
    assert torch.corrcoef(torch.stack([out[:, 0].ravel(), out[:, 1].ravel()]))[0, 1] > 0.9
    assert out[:, 2:].abs().max() <= 1.0 and out[:, :2].min() > -1.0


def tiny_set(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Dark central blobs (label 1) against dark off-centre bars (label 0)."""
    rng = np.random.default_rng(0)
    x = np.ones((n, 2, 16, 16, 16), dtype=np.float32) + rng.normal(0, 0.05, (n, 2, 16, 16, 16)).astype(np.float32)
    labels = np.arange(n) % 2
    x[labels == 1, 0, 6:10, 6:10, 6:10] = 0.2
    x[labels == 0, 0, 2:4, :, 6:10] = 0.2
    return x, labels


def test_training_is_deterministic_for_a_seed(tmp_path):
    x, y = tiny_set()
    params = TrainParams(epochs=2, batch_size=8, widths=(4, 8), negatives_per_positive=1)
    features = np.stack([y, 1.0 - y], axis=1).astype(np.float32)
    first, history = train_classifier(x, features, y, params, members=2)
    again, _ = train_classifier(x, features, y, params, members=2)
    assert [(h["member"], h["epoch"]) for h in history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(np.isfinite(h["loss"]) for h in history)
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    # Each member is the lone network of its seed, and the ensemble averages their logits.
    lone, _ = train_classifier(x, features, y, params.model_copy(update={"seed": 1}))
    for (name, a), b in zip(first.members[1].state_dict().items(), lone.members[0].state_dict().values()):
        assert torch.equal(a, b), name
    xt, ft = torch.from_numpy(x), torch.from_numpy(features)
    with torch.no_grad():
        members = torch.stack([member(xt, ft) for member in first.members])
        assert torch.allclose(first(xt, ft), members.mean(dim=0))


def test_mimics_join_every_epoch_on_top_of_the_drawn_negatives():
    x, y = tiny_set()
    keep = (y == 0) | (np.cumsum(y) <= 4)  # 4 microbleeds, 12 others of which 3 are mimics
    x, y = x[keep], y[keep]
    features = np.stack([y, 1.0 - y], axis=1).astype(np.float32)
    mimics = np.zeros(len(y), dtype=bool)
    mimics[np.flatnonzero(y == 0)[:3]] = True
    params = TrainParams(epochs=2, batch_size=8, widths=(4, 8), negatives_per_positive=1)
    _, history = train_classifier(x, features, y, params, mimics=mimics)
    assert [h["examples"] for h in history] == [4 + 3 + 4] * 2
    without = params.model_copy(update={"mimics_every_epoch": False})
    _, history = train_classifier(x, features, y, without, mimics=mimics)
    assert [h["examples"] for h in history] == [4 + 4] * 2


def test_weights_round_trip_through_safetensors_without_pickle(tmp_path):
    model = CandidateNet(ModelSpec(in_channels=1, widths=(4, 8), n_features=3, members=2)).eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    header_length = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: length + JSON header
    assert path.read_bytes()[8:8 + header_length].startswith(b"{")
    loaded = load_model(path)
    x, f = torch.rand(3, 1, 16, 16, 16), torch.rand(3, 3)
    with torch.no_grad():
        assert loaded(x, f).shape == (3,) and torch.allclose(loaded(x, f), model(x, f))
    with pytest.raises(ValueError, match="3 stage-1 features"):
        loaded(x)
    assert loaded.spec == model.spec


def test_a_model_with_the_wide_view_reads_twice_the_channels(tmp_path):
    model = CandidateNet(ModelSpec(in_channels=2, widths=(4, 8), n_features=3, context_mm=40.0)).eval()
    assert model.spec.input_channels == 4
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.spec == model.spec
    with torch.no_grad():
        assert loaded(torch.rand(2, 4, 16, 16, 16), torch.rand(2, 3)).shape == (2,)
    # Weights written before the wide view existed have none.
    old = {"in_channels": 1, "widths": [4, 8], "patch_size": 16, "patch_mm": 20.0, "n_features": 3, "members": 1}
    assert ModelSpec.from_metadata({"cmbflow_spec": json.dumps(old)}).input_channels == 1


def test_patches_of_other_views_than_the_settings_are_refused(tmp_path):
    x, y = tiny_set(8)
    np.savez(tmp_path / "p.npz", patches=x, features=np.zeros((8, 9), np.float32), label=y,
             kind=np.full(8, "other"), has_phase=np.ones(8, bool), context_mm=np.float64(0.0))
    with pytest.raises(ValueError, match="collect the patches again"):
        train_models(tmp_path / "p.npz", tmp_path / "a", tmp_path / "b", tmp_path / "h.json",
                     TrainParams(epochs=1, context_mm=40.0), {"phase": 1, "magnitude": 1})


def test_a_temperature_rescales_logits_and_keeps_the_order():
    probability = np.array([0.01, 0.5, 0.9, 0.999])
    scans = [ScanScores(np.zeros((4, 3)), probability, np.zeros((0, 3)), np.zeros(0), np.ones(3))]
    (out,) = recalibrated(scans, 2.0)
    logit = np.log(probability / (1 - probability))
    np.testing.assert_allclose(out.probability, 1 / (1 + np.exp(-logit / 2)))
    assert out.probability[1] == pytest.approx(0.5) and np.all(np.diff(out.probability) > 0)


def test_platt_scaling_recovers_a_temperature_and_a_shift():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, 40000)
    target = rng.random(40000) < 1 / (1 + np.exp(-(logits / 2.0 - 1.5)))
    temperature, shift = fit_platt(logits, target)
    assert temperature == pytest.approx(2.0, rel=0.1) and shift == pytest.approx(-1.5, abs=0.15)
    (out,) = recalibrated([ScanScores(np.zeros((1, 3)), np.array([0.5]), np.zeros((0, 3)), np.zeros(0), np.ones(3))],
                          temperature, shift)
    assert out.probability[0] == pytest.approx(1 / (1 + np.exp(-shift)))


def test_missing_weights_name_the_file(tmp_path):
    from cmbflow.errors import InputError

    with pytest.raises(InputError, match="weights not found"):
        load_model(tmp_path / "none.safetensors")
