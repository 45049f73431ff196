"""The shipped classifier: safe loading, shapes, and microbleeds over their mimics."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbflow import anat, phase
from cmbflow.errors import InputError
from cmbflow.image import voxel_sizes
from cmbflow.model import VARIANTS, CandidateNet, Classifier, ModelSpec, load_classifier, packaged_model_dir
from cmbflow.candidates import find_candidates
from cmbflow.patches import PATCH_SIZE, candidate_features, candidate_patches, mirror_contrast, n_features
from cmbflow.simulate import sample_subject_params, simulate_subject
from cmbflow.training import label_candidates


def test_packaged_models_are_safetensors_with_a_card():
    folder = packaged_model_dir()
    card = json.loads((folder / "model_card.json").read_text())
    for variant, channels in VARIANTS.items():
        raw = (folder / card["models"][variant]["weights"]).read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])  # no pickle anywhere
        assert json.loads(header["__metadata__"]["cmbflow_spec"])["in_channels"] == channels
        assert 0 < card["models"][variant]["threshold"] < 1


def test_packaged_card_names_licence_limits_and_weights_checksums():
    from cmbflow.model_card import sha256

    folder = packaged_model_dir()
    card = json.loads((folder / "model_card.json").read_text())
    assert card["license"].startswith("MIT") and "not a medical device" in card["intended_use"].lower()
    assert any("no annotated real data" in item.lower() for item in card["limitations"])
    assert card["weights_sha256"] == {name: sha256(folder / model["weights"]) for name, model in card["models"].items()}
    assert card["weights_sha256"]["phase"] in (folder / "MODEL_CARD.md").read_text()


def test_classifier_per_subject_and_output_shapes():
    with_phase, without = load_classifier(None, has_phase=True), load_classifier(None, has_phase=False)
    assert (with_phase.variant, without.variant) == ("phase", "magnitude")
    patch = (PATCH_SIZE,) * 3
    probability = with_phase.predict(np.ones((5, 2, *patch), np.float32), np.zeros((5, n_features(True)), np.float32))
    assert probability.shape == (5,) and ((probability >= 0) & (probability <= 1)).all()
    _, sd = with_phase.predict_with_spread(np.ones((5, 2, *patch), np.float32),
                                           np.zeros((5, n_features(True)), np.float32))
    assert sd.shape == (5,) and ((sd >= 0) & (sd <= 0.5)).all()
    empty = without.predict_with_spread(np.zeros((0, 1, *patch), np.float32),
                                        np.zeros((0, n_features(False)), np.float32))
    assert [a.shape for a in empty] == [(0,), (0,)]
    with pytest.raises(ValueError, match="channels"):
        without.predict(np.ones((1, 2, *patch), np.float32), np.zeros((1, n_features(False)), np.float32))
    assert load_classifier(None, has_phase=True, threshold=0.9).threshold == 0.9
    # The magnitude model's calls at iron nuclei come with a mirror veto; the phase model makes none.
    assert (with_phase.mirror_veto, without.mirror_veto) == (None, 0.8)
    assert load_classifier(None, has_phase=False, mirror_veto=False).mirror_veto is None


def test_spread_across_members_is_zero_when_they_agree_and_positive_when_they_disagree():
    torch.manual_seed(0)
    spec = ModelSpec(in_channels=1, n_features=2, members=2)
    disagree = CandidateNet(spec).eval()  # members initialised from different seeds
    agree = CandidateNet(spec).eval()
    agree.members[1].load_state_dict(agree.members[0].state_dict())
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(6, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)).astype(np.float32)
    features = rng.normal(size=(6, 2)).astype(np.float32)
    probability, sd = Classifier(agree, 0.5, "magnitude").predict_with_spread(patches, features)
    assert sd.shape == (6,) and np.allclose(sd, 0) and ((probability > 0) & (probability < 1)).all()
    probability, sd = Classifier(disagree, 0.5, "magnitude").predict_with_spread(patches, features)
    assert (sd > 0).all()
    with torch.no_grad():  # two members: the standard deviation is half their difference
        members = torch.sigmoid(disagree.member_logits(torch.from_numpy(patches), torch.from_numpy(features)))
    np.testing.assert_allclose(sd, (members[0] - members[1]).abs().numpy() / 2, rtol=1e-5)
    np.testing.assert_array_equal(probability, Classifier(disagree, 0.5, "magnitude").predict(patches, features))


def test_a_model_trained_with_other_inputs_is_a_clear_error(tmp_path):
    from cmbflow.errors import InputError
    from cmbflow.model import save_model

    card = {"models": {"phase": {"weights": "phase.safetensors", "threshold": 0.5}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    save_model(CandidateNet(ModelSpec(2, n_features=n_features(True) - 1)), tmp_path / "phase.safetensors")
    with pytest.raises(InputError, match="trained for another version"):
        load_classifier(tmp_path, has_phase=True)


def test_model_dir_without_card_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="model card not found"):
        load_classifier(tmp_path, has_phase=True)


@pytest.fixture(scope="module")
def scored():
    """Stage 1 and 2 on a standard simulated scan with bleeds, calcifications and veins."""
    rng = np.random.default_rng([77, 1])
    params = dataclasses.replace(sample_subject_params(rng, "standard"), n_cmb=4, n_calcifications=3)
    subject = simulate_subject(params, rng)
    img = anat.n4_bias_correct(nib.Nifti1Image(subject.magnitude, subject.affine))
    mask = subject.brain_mask > 0
    hp = phase.highpass(phase.unwrap(subject.phase, mask), mask, voxel_sizes(subject.affine), 4.0)
    table = find_candidates(img, mask, hp)
    table["kind"] = label_candidates(table, subject.lesions, voxel_sizes(subject.affine))
    vein_points = np.concatenate([np.asarray(v["points_xyz"]) for v in subject.realised["veins"]])
    near_vein = np.linalg.norm(table[["x", "y", "z"]].to_numpy()[:, None] - vein_points[None], axis=-1).min(axis=1)
    table.loc[(table["kind"] == "other") & (near_vein < 1.5), "kind"] = "vein"
    magnitude = img.get_fdata(dtype=np.float32)
    xyz = table[["x", "y", "z"]].to_numpy(float)
    head = np.asarray(subject.realised["world_from_mni"])  # the true pose stands in for the registration
    table["mirror_contrast"] = mirror_contrast((xyz - head[:3, 3]) @ np.linalg.inv(head[:3, :3]).T, table["contrast"])
    for has_phase in (True, False):
        classifier = load_classifier(None, has_phase=has_phase)
        patches = candidate_patches(magnitude, mask, subject.affine, xyz, hp if has_phase else None,
                                    context_mm=classifier.model.spec.context_mm)
        table[f"p_{has_phase}"] = classifier.predict(patches, candidate_features(table, has_phase))
    return table


@pytest.mark.slow
@pytest.mark.parametrize("has_phase", [True, False])
def test_microbleeds_score_above_calcifications_and_veins(scored, has_phase):
    p = scored.groupby("kind")[f"p_{has_phase}"]
    assert {"cmb", "calcification", "vein"} <= set(p.groups), p.size()
    assert p.median()["cmb"] > max(p.max()["calcification"], p.max()["vein"]), p.describe()
