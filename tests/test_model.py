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
from cmbflow.patches import PATCH_SIZE, candidate_patches
from cmbflow.simulate import sample_subject_params, simulate_subject


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
    probability = with_phase.predict(np.ones((5, 2, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32))
    assert probability.shape == (5,) and ((probability >= 0) & (probability <= 1)).all()
    assert without.predict(np.zeros((0, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="channels"):
        without.predict(np.ones((1, 2, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32))
    assert load_classifier(None, has_phase=True, threshold=0.9).threshold == 0.9


def test_model_dir_without_card_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="model card not found"):
        load_classifier(tmp_path, has_phase=True)


@pytest.fixture(scope="module")
def scan():
    """A standard simulated scan with two bleeds, two calcifications and veins, as stage 2 sees it."""
    rng = np.random.default_rng([77, 1])
    params = dataclasses.replace(sample_subject_params(rng, "standard"), n_cmb=3, n_calcifications=2,
                                 cmb_diameter_mm=(3.0, 4.0), cmb_chi_ppm=(0.6, 1.0))
    subject = simulate_subject(params, rng)
    img = anat.n4_bias_correct(nib.Nifti1Image(subject.magnitude, subject.affine))
    mask = subject.brain_mask > 0
    hp = phase.highpass(phase.unwrap(subject.phase, mask), mask, voxel_sizes(subject.affine), 4.0)
    return subject, img.get_fdata(dtype=np.float32), mask, hp


def test_microbleed_scores_above_calcification_and_vein(scan):
    subject, magnitude, mask, hp = scan
    lesions = subject.lesions
    veins = [v["points_xyz"][len(v["points_xyz"]) // 2] for v in subject.realised["veins"]]
    points = {
        "cmb": lesions.loc[lesions.kind == "cmb", ["x", "y", "z"]].to_numpy(float),
        "calcification": lesions.loc[lesions.kind == "calcification", ["x", "y", "z"]].to_numpy(float),
        "vein": np.asarray(veins, dtype=float),
    }
    for has_phase in (True, False):
        classifier = load_classifier(None, has_phase=has_phase)
        scores = {
            kind: classifier.predict(candidate_patches(magnitude, mask, subject.affine, xyz, hp if has_phase else None))
            for kind, xyz in points.items()
        }
        assert scores["cmb"].max() > max(scores["calcification"].max(), scores["vein"].max()), (has_phase, scores)
        if has_phase:  # with phase, every bleed beats every mimic
            assert scores["cmb"].min() > max(scores["calcification"].max(), scores["vein"].max()), scores
