"""3D fast radial symmetry transform: geometry in world mm, linearity over radii, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmbflow.frst import _frst_dark, frst3d, gaussian_smooth, resolve_device
from cmbflow.image import ijk_to_xyz, voxel_sizes

# LPS-ordered, anisotropic grid: array axes run towards Left, Posterior and Superior.
AFFINE = np.array([
    [-0.9, 0.0, 0.0, 30.0],
    [0.0, -0.9, 0.0, 25.0],
    [0.0, 0.0, 1.8, -30.0],
    [0.0, 0.0, 0.0, 1.0],
])
SHAPE = (64, 60, 34)


def sphere_volume(centre_xyz, radius_mm, contrast=0.6, noise=0.03, seed=0):
    """Unit background with a partial-volumed dark sphere at a world position, plus noise."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.linalg.norm(ijk_to_xyz(AFFINE, ijk) - np.asarray(centre_xyz), axis=1).reshape(SHAPE)
    inside = np.clip(radius_mm + 0.5 - dist, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    return (1.0 - contrast * inside + noise * rng.standard_normal(SHAPE)).astype(np.float32)


def test_dark_sphere_found_at_its_world_position() -> None:
    centre = np.array([2.3, -3.1, -1.4])  # world RAS+ mm, deliberately off the voxel grid
    volume = sphere_volume(centre, radius_mm=2.0)
    response = frst3d(volume, voxel_sizes(AFFINE), [1.0, 2.0, 3.0])
    peak = np.unravel_index(np.argmax(response), SHAPE)
    found = ijk_to_xyz(AFFINE, peak)[0]
    assert np.all(np.abs(found - centre) <= np.abs(np.diag(AFFINE)[:3]))  # within one voxel per axis


def test_bright_sphere_gives_no_dark_peak() -> None:
    dark = frst3d(sphere_volume([0, 0, 0], 2.0, noise=0.0), voxel_sizes(AFFINE), [2.0])
    bright = frst3d(sphere_volume([0, 0, 0], 2.0, contrast=-0.6, noise=0.0), voxel_sizes(AFFINE), [2.0])
    assert bright.max() < 0.05 * dark.max()


def test_mask_restricts_output_and_run_is_deterministic() -> None:
    volume = sphere_volume([0, 0, 0], 2.0)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, :, : SHAPE[2] // 2] = True
    first = frst3d(volume, voxel_sizes(AFFINE), [1.0, 2.0], mask=mask)
    second = frst3d(volume, voxel_sizes(AFFINE), [1.0, 2.0], mask=mask)
    assert np.array_equal(first, second)
    assert np.all(first[~mask] == 0) and first[mask].max() > 0


def test_cropping_to_the_mask_changes_nothing() -> None:
    # frst3d works in the box that can influence the mask; the full volume must give the same.
    volume = sphere_volume([0, 0, 0], 2.0)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[20:40, 25:35, 12:20] = True
    sizes = voxel_sizes(AFFINE)
    cropped = frst3d(volume, sizes, [1.0, 2.0, 3.0], mask=mask)
    full = _frst_dark(torch.from_numpy(volume), torch.from_numpy(mask), sizes, [1.0, 2.0, 3.0], 2.0, 0.7).numpy()
    assert np.allclose(cropped, full, atol=1e-6 * full.max())


def test_sum_over_radii_equals_separate_transforms() -> None:
    # The nested smoothing over radii must equal smoothing each radius on its own.
    volume = sphere_volume([0, 0, 0], 2.5)
    sizes = voxel_sizes(AFFINE)
    together = frst3d(volume, sizes, [1.0, 2.0, 4.0])
    apart = sum(frst3d(volume, sizes, [r]) for r in (1.0, 2.0, 4.0))
    assert np.allclose(together, apart, atol=1e-3 * apart.max())


def test_gaussian_smooth_has_the_requested_width_in_mm() -> None:
    impulse = torch.zeros((31, 31, 31))
    impulse[15, 15, 15] = 1.0
    sizes = (0.9, 0.9, 1.8)
    response = gaussian_smooth(impulse, 1.2, sizes).numpy()
    assert response.sum() == pytest.approx(1.0, abs=1e-5)
    offsets = np.arange(31) - 15
    for axis, size in enumerate(sizes):
        profile = response.sum(axis=tuple(a for a in range(3) if a != axis))
        variance_vox = float((profile * offsets**2).sum())
        assert variance_vox == pytest.approx((1.2 / size) ** 2, rel=1e-2)  # tails cut at 3 sigma
    # Smoothing twice adds variances (what the nested sum over radii relies on).
    twice = gaussian_smooth(gaussian_smooth(impulse, 0.6, sizes), 0.8, sizes).numpy()
    assert np.allclose(twice, gaussian_smooth(impulse, 1.0, sizes).numpy(), atol=1e-3 * response.max())


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


def test_rejects_bad_arguments() -> None:
    volume = np.zeros((5, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError):
        frst3d(volume, (1.0, 1.0), [1.0])
    with pytest.raises(ValueError):
        frst3d(volume, (1.0, 1.0, 1.0), [])
    with pytest.raises(ValueError):
        frst3d(volume, (1.0, 1.0, 1.0), [1.0], mask=np.ones((5, 5, 4), dtype=bool))
    assert not frst3d(volume, (1.0, 1.0, 1.0), [1.0]).any()  # flat image: no votes
    assert not frst3d(volume, (1.0, 1.0, 1.0), [1.0], mask=np.zeros((5, 5, 5), dtype=bool)).any()
