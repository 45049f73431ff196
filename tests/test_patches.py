"""World-aligned candidate patches: independent of voxel size and array order."""

from __future__ import annotations

import numpy as np
import pytest

from cmbflow.image import ijk_to_xyz
from cmbflow.patches import PATCH_MM, PATCH_SIZE, candidate_patches, mirror_contrast, patch_offsets_mm, sample_patches

CENTRE = np.array([4.0, -6.0, 10.0])


def scan(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A linear ramp in world x plus a dark 3 mm ball at CENTRE, sampled on the given grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk_to_xyz(affine, ijk).reshape(*shape, 3)
    ball = np.linalg.norm(xyz - CENTRE, axis=-1) <= 3.0
    return (100.0 + xyz[..., 0] - 80.0 * ball).astype(np.float32)


RAS = np.diag([0.5, 0.5, 0.5, 1.0]) + np.array([[0, 0, 0, -30.0], [0, 0, 0, -36], [0, 0, 0, -20], [0, 0, 0, 0]])
# Same field of view, stored as P-S-L (permuted and flipped axes) with 0.5 x 0.5 x 2 mm voxels.
PSL = np.array([[0.0, 0.0, -0.5, 30.0], [-0.5, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 0.0, 1.0]])


def test_offsets_cover_the_physical_extent_on_a_centred_grid():
    offsets = patch_offsets_mm()
    spacing = PATCH_MM / PATCH_SIZE
    assert offsets.shape == (PATCH_SIZE**3, 3)
    assert offsets.min() == pytest.approx(-(PATCH_MM - spacing) / 2) and offsets.mean(axis=0) == pytest.approx(0)


def test_patches_follow_world_axes_whatever_the_voxel_order():
    ras = sample_patches(scan(RAS, (121, 145, 81)), RAS, [CENTRE])[0]
    psl = sample_patches(scan(PSL, (133, 21, 121)), PSL, [CENTRE])[0]
    # The ramp rises along the first patch axis (world x) in both, by 1.25 mm per sample.
    assert np.diff(ras[:, 0, 0]).mean() == pytest.approx(PATCH_MM / PATCH_SIZE, abs=0.05)
    assert np.diff(psl[:, 0, 0]).mean() == pytest.approx(PATCH_MM / PATCH_SIZE, abs=0.05)
    # The ball is dark at the centre in both; the 2 mm slices blur it, but only along world z.
    middle = PATCH_SIZE // 2
    assert ras[middle, middle, middle] < 40 and psl[middle, middle, middle] < 60
    assert np.abs(ras[:, :, 0] - psl[:, :, 0]).max() < 1.0  # far from the ball: the same ramp


def test_channels_are_normalised_and_phase_signed():
    affine = RAS
    magnitude = scan(affine, (121, 145, 81))
    mask = np.ones(magnitude.shape, dtype=bool)
    phase = np.full(magnitude.shape, -0.5, dtype=np.float32)  # paramagnetic with the default sign
    patches = candidate_patches(magnitude, mask, affine, [CENTRE, CENTRE + 5], phase, paramagnetic_sign=-1)
    assert patches.shape == (2, 2, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE) and patches.dtype == np.float32
    assert patches[:, 0].max() <= 2.0 and np.median(patches[1, 0]) == pytest.approx(1.0, abs=0.1)
    assert patches[:, 1] == pytest.approx(0.5 / np.pi)
    assert candidate_patches(magnitude, mask, affine, [CENTRE]).shape[1] == 1  # no phase: one channel
    assert candidate_patches(magnitude, mask, affine, np.zeros((0, 3))).shape == (0, 1, *(PATCH_SIZE,) * 3)


def test_the_wide_view_shows_what_lies_beyond_the_small_patch():
    magnitude = scan(RAS, (121, 145, 81))
    mask = np.ones(magnitude.shape, dtype=bool)
    phase = np.full(magnitude.shape, -0.5, dtype=np.float32)
    beside = CENTRE + [0.0, 14.0, 0.0]  # the dark ball 14 mm away: beyond 10 mm, within 20 mm
    small_mag, wide_mag, small_phase, wide_phase = candidate_patches(
        magnitude, mask, RAS, [beside], phase, paramagnetic_sign=-1, context_mm=40.0)[0]
    assert small_mag.min() > 0.6 and wide_mag.min() < 0.5
    assert small_phase == pytest.approx(0.5 / np.pi) and wide_phase == pytest.approx(0.5 / np.pi)


def test_the_wide_view_is_smoothed_to_its_spacing_not_aliased():
    rng = np.random.default_rng(0)
    magnitude = (100.0 + 30.0 * rng.standard_normal((121, 145, 81))).astype(np.float32)
    small, wide = candidate_patches(magnitude, magnitude > -np.inf, RAS, [[0.0, 0.0, 0.0]], context_mm=40.0)[0]
    # Voxel noise (0.3): the 1.25 mm samples keep half of it (measured 0.149), the 2.5 mm view
    # averages it away (0.015).
    assert small.std() > 0.1 and wide.std() < 0.03


def test_empty_brain_is_an_error():
    magnitude = np.zeros((10, 10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="no positive signal"):
        candidate_patches(magnitude, magnitude > 0, np.eye(4), [[5.0, 5.0, 5.0]])


def test_a_mirrored_twin_gives_its_relative_contrast_and_a_lone_spot_none():
    mni = [[5.0, -20.0, -9.0], [-6.0, -21.0, -8.0], [30.0, 10.0, 20.0], [-20.0, 10.0, 20.0], [0.5, 0.0, 0.0]]
    contrast = [0.5, 0.25, 0.8, 0.9, 0.6]
    ratio = mirror_contrast(mni, contrast)
    # The red-nucleus-like pair sees each other (within 4 mm of the mirror image); the spot at
    # x=30 has no twin (x=-20 is 10 mm off), nor has the one on the midline (itself does not count).
    assert ratio == pytest.approx([0.5, 2.0, 0.0, 0.0, 0.0])
    assert mirror_contrast(np.zeros((0, 3)), []).shape == (0,)
