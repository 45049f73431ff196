"""The shipped classifier: safe loading, shapes, and microbleeds over their mimics."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from cmbflow import anat, phase
from cmbflow.errors import InputError
from cmbflow.image import voxel_sizes
from cmbflow.model import VARIANTS, load_classifier, packaged_model_dir
from cmbflow.candidates import find_candidates
from cmbflow.patches import PATCH_SIZE, candidate_features, candidate_patches, n_features
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


def test_classifier_per_subject_and_output_shapes():
    with_phase, without = load_classifier(None, has_phase=True), load_classifier(None, has_phase=False)
    assert (with_phase.variant, without.variant) == ("phase", "magnitude")
    patch = (PATCH_SIZE,) * 3
    probability = with_phase.predict(np.ones((5, 2, *patch), np.float32), np.zeros((5, n_features(True)), np.float32))
    assert probability.shape == (5,) and ((probability >= 0) & (probability <= 1)).all()
    empty = without.predict(np.zeros((0, 1, *patch), np.float32), np.zeros((0, n_features(False)), np.float32))
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="channels"):
        without.predict(np.ones((1, 2, *patch), np.float32), np.zeros((1, n_features(False)), np.float32))
    assert load_classifier(None, has_phase=True, threshold=0.9).threshold == 0.9


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
    for has_phase in (True, False):
        classifier = load_classifier(None, has_phase=has_phase)
        patches = candidate_patches(magnitude, mask, subject.affine, xyz, hp if has_phase else None)
        table[f"p_{has_phase}"] = classifier.predict(patches, candidate_features(table, has_phase))
    return table


@pytest.mark.parametrize("has_phase", [True, False])
def test_microbleeds_score_above_calcifications_and_veins(scored, has_phase):
    p = scored.groupby("kind")[f"p_{has_phase}"]
    assert {"cmb", "calcification", "vein"} <= set(p.groups), p.size()
    assert p.median()["cmb"] > max(p.max()["calcification"], p.max()["vein"]), p.describe()
