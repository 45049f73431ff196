"""The CUDA paths (FRST, stage 1, classification, training) agree with the CPU.

Skipped without a GPU, as on CI; run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import numpy as np
import pytest
import torch

from cmbflow.candidates import find_candidates
from cmbflow.config import CandidateParams, TrainParams
from cmbflow.frst import frst3d
from cmbflow.image import voxel_sizes
from cmbflow.model import load_classifier
from cmbflow.patches import candidate_features, candidate_patches
from cmbflow.training import train_classifier
from test_candidates import AFFINE, synthetic_scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def scan():
    return synthetic_scan()


def test_frst_on_cuda_matches_cpu(scan) -> None:
    image, mask = scan
    data, sizes, radii = image.get_fdata(dtype=np.float32), voxel_sizes(AFFINE), CandidateParams().frst_radii_mm
    cpu = frst3d(data, sizes, radii, mask=mask, device="cpu")
    cuda = frst3d(data, sizes, radii, mask=mask, device="cuda")
    # CUDA votes with atomic float additions: equal up to rounding.
    np.testing.assert_allclose(cuda, cpu, rtol=1e-4, atol=1e-6 * float(np.abs(cpu).max()))


def test_stage1_on_cuda_finds_the_same_candidates(scan) -> None:
    image, mask = scan
    cpu = find_candidates(image, mask, None, CandidateParams(), "cpu")
    cuda = find_candidates(image, mask, None, CandidateParams(), "cuda")
    assert len(cuda) == len(cpu)
    np.testing.assert_allclose(cuda[["x", "y", "z"]], cpu[["x", "y", "z"]], atol=1e-3)


def test_classification_and_training_on_cuda(scan) -> None:
    image, mask = scan
    table = find_candidates(image, mask, None, CandidateParams(), "cpu")
    centres = table[["x", "y", "z"]].to_numpy(float)
    classifier = load_classifier(None, has_phase=False)
    patches = candidate_patches(image.get_fdata(dtype=np.float32), mask, AFFINE, centres,
                                context_mm=classifier.model.spec.context_mm)
    table["mirror_contrast"] = 0.0  # a synthetic scan without registration: no mirror partners
    features = candidate_features(table, with_phase=False)
    # cuDNN convolutions may use TF32 (10-bit mantissa) on recent GPUs: measured differences
    # were up to 1.1e-4 on an H200.
    np.testing.assert_allclose(classifier.predict(patches, features, "cuda"),
                               classifier.predict(patches, features, "cpu"), atol=1e-3)
    labels = (np.arange(len(table)) % 2).astype(np.int8)
    runs = [train_classifier(patches, features, labels, TrainParams(epochs=2), "cuda")[1]
            for _ in range(2)]
    losses = [[epoch["loss"] for epoch in history] for history in runs]
    assert losses[0] == losses[1] and all(np.isfinite(losses[0]))  # deterministic for a seed
