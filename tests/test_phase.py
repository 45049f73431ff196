"""Tests for cmbflow.phase: echo choice, phase units, unwrapping, high-pass and SWI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cmbflow import phase as P
from cmbflow.errors import InputError
from cmbflow.image import check_same_grid, load_image, voxel_sizes

REAL = Path(__file__).parent / "data" / "real-gre-crop"
REAL_TE_S = [0.004, 0.008, 0.012]
TWO_PI = 2 * np.pi


def wrap(x: np.ndarray) -> np.ndarray:
    return np.mod(x + np.pi, TWO_PI) - np.pi


def grid_mm(shape, vox):
    """Voxel-centre coordinates (mm) centred on the volume."""
    return np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * h for n, h in zip(shape, vox)], indexing="ij")


def ellipsoid(shape, vox, fraction=0.45):
    coords = grid_mm(shape, vox)
    half = [fraction * n * h for n, h in zip(shape, vox)]
    return sum((c / a) ** 2 for c, a in zip(coords, half)) < 1


def sphere_phase(shape, vox, centre_mm, radius_mm, amplitude):
    """Phase of a magnetised sphere, B0 along axis 2: 0 inside, dipole outside; paramagnetic = negative."""
    x, y, z = (c - c0 for c, c0 in zip(grid_mm(shape, vox), centre_mm))
    r = np.maximum(np.sqrt(x * x + y * y + z * z), 1e-6)
    field = (radius_mm / r) ** 3 * (3 * (z / r) ** 2 - 1) / 3
    return -amplitude * np.where(r > radius_mm, field, 0.0)


SHAPE, VOX = (40, 48, 16), (0.8, 0.8, 2.0)


@pytest.fixture(scope="module")
def smooth_phase():
    """Smooth phase with several wraps on an anisotropic grid.

    Harmonic in mm, like a real background field inside the brain (its sources lie outside).
    """
    x, y, z = grid_mm(SHAPE, VOX)
    true = 0.02 * (x**2 - z**2) + 0.01 * x * y + 0.5 * y + 0.2 * z
    return true, ellipsoid(SHAPE, VOX)


# --- echo selection ----------------------------------------------------------------------------


def test_select_echo_rules_on_4d():
    data = 4
    te = [0.005, 0.015, 0.025, 0.035]
    assert P.select_echo(data, te, "first") == 0
    assert P.select_echo(data, te, "last") == 3
    assert P.select_echo(data, None, 2) == 1
    assert P.select_echo(data, None, " 3 ") == 2
    assert P.select_echo(data, te, "closest:25") == 2
    assert P.select_echo(data, te, "closest:21") == 2
    assert P.select_echo(data, te, "closest:20") == 1  # tie goes to the earlier echo
    assert P.select_echo(data, te, "CLOSEST:100") == 3


def test_select_echo_on_3d():
    data = 1
    assert P.select_echo(data, None, "last") == 0
    assert P.select_echo(data, None, 1) == 0
    assert P.select_echo(data, None, "closest:20") == 0
    with pytest.raises(InputError, match="echo 2 requested but the data have 1"):
        P.select_echo(data, None, 2)


@pytest.mark.parametrize(
    ("te", "rule", "message"),
    [
        (None, 5, "echo 5 requested but the data have 4"),
        (None, 0, "echo 0 requested"),
        (None, "closest:20", "needs echo times"),
        ([0.01, 0.02], "first", "2 echo times given for 4 echoes"),
        ([5, 10, 15, 20], "first", "look like milliseconds"),
        ([0.01, 0.02, 0.0, 0.04], "first", "not positive"),
        (None, "middle", "not understood"),
        (None, True, "not understood"),
        ([0.01, 0.02, 0.03, 0.04], "closest:abc", "no number"),
        ([0.01, 0.02, 0.03, 0.04], "closest:-3", "positive time"),
    ],
)
def test_select_echo_errors(te, rule, message):
    with pytest.raises(InputError, match=message) as err:
        P.select_echo(4, te, rule, subject="sub-01", path="/x/phase.nii.gz")
    assert str(err.value).startswith("sub-01: /x/phase.nii.gz: ")
    assert "\n" not in str(err.value)


# --- units -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrapped(smooth_phase):
    true, _ = smooth_phase
    return wrap(true)


def circular_error(a, b):
    return np.abs(wrap(np.asarray(a, dtype=float) - b)).max()


def test_units_radians(wrapped):
    assert P.detect_phase_units(wrapped.astype(np.float32), {}) == "rad"
    assert P.detect_phase_units(wrapped, {"Units": "rad"}) == "rad"
    # [0, 2pi) is radians too
    assert P.detect_phase_units(wrapped + np.pi, {}) == "rad"
    out = P.phase_to_radians(wrapped + np.pi, "rad")
    assert out.dtype == np.float32 and out.min() >= -np.pi and out.max() < np.pi
    assert circular_error(out, wrapped + np.pi) < 1e-5


def test_units_signed_integers(wrapped):
    # Siemens via dcm2niix: slope 2, intercept -4096 -> even values in -4096..4094
    ints = 2 * np.round(wrapped * 2048 / np.pi).clip(-2048, 2047)
    assert ints.min() == -4096 and ints.max() == 4094
    assert P.detect_phase_units(ints, {}) == "integer"
    assert P.detect_phase_units(ints, {"Units": "arbitrary"}) == "integer"
    assert circular_error(P.phase_to_radians(ints, "integer"), wrapped) < 1.01 * np.pi / 2048


def test_units_unsigned_integers(wrapped):
    # raw 12-bit Siemens: 0..4095 with 2048 = 0 rad
    ints = np.round(wrapped * 2048 / np.pi + 2048).clip(0, 4095).astype(np.int16)
    assert P.detect_phase_units(ints, {}) == "integer"
    assert circular_error(P.phase_to_radians(ints, "integer"), wrapped) < 1.01 * np.pi / 2048


def test_units_tiny_arbitrary_range(wrapped):
    # like the ROMEO crop: +-0.0037 in 4096 levels
    tiny = (np.round(wrapped * 2048 / np.pi).clip(-2048, 2047) * 1.794e-6).astype(np.float32)
    assert P.detect_phase_units(tiny, {}) == "arbitrary-scaled"
    assert P.detect_phase_units(tiny, {"Units": "arbitrary"}) == "arbitrary-scaled"
    assert circular_error(P.phase_to_radians(tiny, "arbitrary-scaled"), wrapped) < 3 * np.pi / 2048


def test_units_sidecar_arbitrary_on_radian_values(wrapped):
    assert P.detect_phase_units(wrapped, {"Units": "arbitrary"}) == "arbitrary-scaled"
    # min-max of a full-circle radian image is nearly the identity
    assert circular_error(P.phase_to_radians(wrapped, "arbitrary-scaled"), wrapped) < 0.01


@pytest.mark.parametrize(
    ("make", "sidecar", "message"),
    [
        (lambda w: 2 * np.round(w * 2048 / np.pi), {"Units": "rad"}, "sidecar says Units 'rad'"),
        (lambda w: w * 1e-3, {"Units": "rad"}, "sidecar says Units 'rad'"),
        (lambda w: w, {"Units": "Hz"}, "not a phase unit"),
        (lambda w: np.where(np.isfinite(w), np.nan, 0), {}, "NaN"),
        (lambda w: np.zeros_like(w), {}, "constant"),
    ],
)
def test_units_contradictions_rejected(wrapped, make, sidecar, message):
    with pytest.raises(InputError, match=message):
        P.detect_phase_units(make(wrapped), sidecar, subject="sub-02", path="p.nii.gz")


def test_units_rejects_images_without_wraps(smooth_phase):
    true, _ = smooth_phase
    magnitude_like = np.round((true - true.min()) / np.ptp(true) * 4095)  # integers, no wraps
    with pytest.raises(InputError, match="no phase wraps"):
        P.detect_phase_units(magnitude_like, {})
    with pytest.raises(InputError, match="no phase wraps"):
        P.detect_phase_units(true * 1e-3, {})  # unwrapped phase in some unit


def test_phase_to_radians_unknown_units(wrapped):
    with pytest.raises(ValueError, match="unknown phase units"):
        P.phase_to_radians(wrapped, "degrees")


# --- unwrapping --------------------------------------------------------------------------------


def test_unwrap_recovers_smooth_ramp_on_anisotropic_grid(smooth_phase):
    true, mask = smooth_phase
    rng = np.random.default_rng(0)
    assert np.ptp(true[mask]) > 3 * TWO_PI  # several wraps
    noisy = true + rng.normal(0, 0.05, true.shape)
    measured = wrap(noisy)
    out = P.unwrap(measured, mask)
    assert out.dtype == np.float32 and np.all(out[~mask] == 0)
    turns = (out - noisy)[mask] / TWO_PI
    assert np.allclose(turns, np.round(turns), atol=1e-4)  # congruent with the input
    offset = np.median(out[mask] - true[mask])
    assert abs(offset / TWO_PI - round(offset / TWO_PI)) < 1e-3
    assert np.abs(out[mask] - true[mask] - offset).max() < 0.3
    assert -np.pi <= out[mask].mean() <= np.pi


def test_unwrap_keeps_a_noisy_pocket_local(smooth_phase):
    true, mask = smooth_phase
    rng = np.random.default_rng(1)
    x, y, z = grid_mm(SHAPE, VOX)
    pocket = (x - 6) ** 2 + y**2 + z**2 < 5**2  # signal dropout: phase is pure noise there
    measured = np.where(pocket, rng.uniform(-np.pi, np.pi, true.shape), wrap(true + rng.normal(0, 0.2, true.shape)))
    out = P.unwrap(measured, mask)
    good = mask & ~ndimage.binary_dilation(pocket)
    err = out[good] - true[good]
    err -= TWO_PI * np.round(np.median(err) / TWO_PI)
    assert np.mean(np.abs(err) > np.pi) < 1e-3


def test_unwrap_aligns_each_mask_component(smooth_phase):
    true, _ = smooth_phase
    x, _, _ = grid_mm(SHAPE, VOX)
    mask = ellipsoid(SHAPE, VOX) & (np.abs(x) > 2)  # two halves, not connected
    out = P.unwrap(wrap(true), mask)
    for half in (mask & (x < 0), mask & (x > 0)):
        assert -np.pi <= out[half].mean() <= np.pi
        assert np.ptp(out[half] - true[half]) < 1e-3  # each half unwrapped exactly


def test_unwrap_is_deterministic():
    # pure noise maximises the tie-breaking at the mask border that scikit-image randomises
    noise = np.random.default_rng(2).uniform(-np.pi, np.pi, (24, 24, 12))
    mask = ellipsoid(noise.shape, (1.0, 1.0, 1.0))
    assert np.array_equal(P.unwrap(noise, mask), P.unwrap(noise, mask))


def test_unwrap_rejects_bad_mask(wrapped):
    with pytest.raises(ValueError, match="mask is empty"):
        P.unwrap(wrapped, np.zeros(wrapped.shape, bool))
    with pytest.raises(ValueError, match="differs"):
        P.unwrap(wrapped, np.ones((2, 2, 2), bool))


# --- high-pass ---------------------------------------------------------------------------------


def test_highpass_removes_background_keeps_local_dipole():
    shape = (64, 72, 28)  # about 51 x 58 x 56 mm
    x, y, z = grid_mm(shape, VOX)
    mask = ellipsoid(shape, VOX)
    background = 0.06 * (x + y + z) + 0.005 * (x**2 - z**2)  # harmonic, 0.1 rad/mm gradient
    local = sphere_phase(shape, VOX, (2.0, -3.0, 0.0), 2.5, amplitude=2.0)
    hp = P.highpass(background + local, mask, VOX, sigma_mm=4.0)
    assert hp.dtype == np.float32 and np.all(hp[~mask] == 0)
    depth = ndimage.distance_transform_edt(mask, sampling=VOX)
    far = (depth >= 8.0) & (np.abs(local) < 1e-3)  # 2 sigma from the mask edge
    # measured: 0.013 rad rms left of a 0.85 rad std background
    assert np.sqrt(np.mean(hp[far] ** 2)) < 0.02 < 0.5 < np.std(background[far])
    # the mask-normalised filter still leaves some background within 2 mm of the edge (0.37 rad)
    edge = mask & (depth < 2.0) & (np.abs(local) < 1e-3)
    assert np.sqrt(np.mean(hp[edge] ** 2)) < 0.5
    near = (depth >= 4.0) & (np.abs(local) > 0.05)
    kept = np.sum(hp[near] * local[near]) / np.sum(local[near] ** 2)
    assert 0.85 < kept < 1.1
    assert np.corrcoef(hp[near], local[near])[0, 1] > 0.95


def test_highpass_removes_constant_and_respects_voxel_size(smooth_phase):
    true, mask = smooth_phase
    assert np.abs(P.highpass(np.full(SHAPE, 7.0), mask, VOX, 4.0)).max() < 1e-5
    # same physical filter whatever the axis order: permute axes and voxel sizes together
    order = (2, 0, 1)
    hp = P.highpass(true, mask, VOX, 4.0)
    hp_perm = P.highpass(true.transpose(order), mask.transpose(order), [VOX[i] for i in order], 4.0)
    assert np.allclose(hp.transpose(order), hp_perm, atol=1e-5)
    with pytest.raises(ValueError, match="voxel_size_mm"):
        P.highpass(true, mask, (1.0, 1.0), 4.0)


# --- SWI ---------------------------------------------------------------------------------------


def test_swi_darkens_only_the_paramagnetic_sign():
    phase = np.array([-2 * np.pi, -np.pi, -np.pi / 2, 0.0, np.pi / 2, np.pi, 2 * np.pi])
    magnitude = np.full(phase.shape, 10.0)
    neg = P.swi(magnitude, phase)  # default: paramagnetic = negative phase
    assert np.allclose(neg, 10 * np.array([0, 0, 0.5**4, 1, 1, 1, 1]))
    pos = P.swi(magnitude, phase, paramagnetic_sign=1, power=2)
    assert np.allclose(pos, 10 * np.array([1, 1, 1, 1, 0.5**2, 0, 0]))
    with pytest.raises(ValueError, match="paramagnetic_sign"):
        P.swi(magnitude, phase, paramagnetic_sign=0)
    with pytest.raises(ValueError, match="power"):
        P.swi(magnitude, phase, power=0)


# --- real data (ROMEO crop: 51x51x41x3, TE 4/8/12 ms, phase at +-0.0037) ----------------------


@pytest.fixture(scope="module")
def real():
    mag_img = load_image(REAL / "Mag.nii.gz", allow_4d=True)
    phase_img = load_image(REAL / "Phase.nii.gz", allow_4d=True)
    check_same_grid(mag_img, phase_img, subject=None, path=REAL / "Phase.nii.gz")
    magnitude = mag_img.get_fdata(dtype=np.float32)
    raw = phase_img.get_fdata(dtype=np.float32)
    units = P.detect_phase_units(raw, {})
    radians = np.stack([P.phase_to_radians(raw[..., e], units) for e in range(raw.shape[3])], axis=-1)
    last = magnitude[..., 2]
    mask = last > 0.3 * np.percentile(last, 99)
    unwrapped = [P.unwrap(radians[..., e], mask).astype(float) for e in range(3)]
    vox = voxel_sizes(mag_img.affine)
    highpassed = [P.highpass(u, mask, vox, P.DEFAULT_SIGMA_MM) for u in unwrapped]
    return dict(magnitude=magnitude, raw=raw, units=units, radians=radians, mask=mask,
                unwrapped=unwrapped, highpassed=highpassed, vox=vox)


def neighbour_jumps(phase, mask):
    """Number of neighbour pairs inside the mask whose phase differs by more than pi."""
    count = 0
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = mask[tuple(lo)] & mask[tuple(hi)]
        count += int(np.count_nonzero(np.abs(np.diff(phase, axis=axis))[both] > np.pi))
    return count


def test_real_loads_4d_and_selects_echo(real):
    assert real["magnitude"].shape == real["raw"].shape == (51, 51, 41, 3)
    assert np.allclose(real["vox"], [0.46875, 0.46875, 1.0])
    assert P.select_echo(real["raw"].shape[3], REAL_TE_S, "last") == 2
    assert P.select_echo(real["raw"].shape[3], REAL_TE_S, "closest:7") == 1
    assert P.select_echo(real["raw"].shape[3], None, 1) == 0


def test_real_phase_units_rescaled_to_pi(real):
    assert real["units"] == "arbitrary-scaled"
    assert np.abs(real["raw"]).max() < 0.004
    assert [P.detect_phase_units(real["raw"][..., e], {}) for e in range(3)] == ["arbitrary-scaled"] * 3
    with pytest.raises(InputError, match="Units 'rad'"):
        P.detect_phase_units(real["raw"], {"Units": "rad"})
    rad = real["radians"]
    assert rad.min() == pytest.approx(-np.pi, abs=1e-6)
    assert np.pi - 0.01 < rad.max() < np.pi


def test_real_unwrapping_is_smooth_and_consistent_across_echoes(real):
    mask = real["mask"]
    assert mask.mean() > 0.95  # the crop is all brain tissue
    wrapped_jumps = neighbour_jumps(real["radians"][..., 2].astype(float), mask)
    unwrapped_jumps = neighbour_jumps(real["unwrapped"][2], mask)
    # measured: 7074 jumps in the wrapped last echo, 7 after unwrapping (of 311k neighbour pairs)
    assert wrapped_jumps > 5000
    assert unwrapped_jumps <= 30
    # phase is linear in TE (4, 8, 12 ms), so echo1 - 2*echo2 + echo3 is constant up to 2pi*k;
    # measured: 0.008 % of voxels off by more than pi
    u1, u2, u3 = real["unwrapped"]
    curvature = (u1 - 2 * u2 + u3)[mask]
    assert np.mean(np.abs(curvature - np.median(curvature)) > np.pi) < 0.005


def test_real_highpass_and_swi(real):
    mask = real["mask"]
    stds = [float(hp[mask].std()) for hp in real["highpassed"]]
    # measured 0.16, 0.29, 0.42 rad: local phase grows with TE and stays small
    assert stds[0] < stds[1] < stds[2] < 0.6
    last_hp = real["highpassed"][2]
    magnitude = real["magnitude"][..., 2]
    image = P.swi(magnitude, last_hp)
    assert np.all(np.isfinite(image)) and np.all(image <= magnitude) and np.all(image >= 0)
    # dark veins carry negative local phase (cmbflow's default sign), so SWI darkens them further
    dark = mask & (magnitude / ndimage.gaussian_filter(magnitude, 3) < 0.7)
    assert dark.sum() > 500
    assert np.mean(last_hp[dark]) < -0.1
    ratio = image / magnitude
    assert ratio[dark].mean() < ratio[mask & ~dark].mean()


def test_highpass_in_the_mask_box_equals_the_whole_field_of_view():
    """Filtered in the mask's bounding box, the local phase is bit for bit the whole-volume one."""
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(40, 36, 30))
    mask = np.zeros(phi.shape, bool)
    mask[5:22, 12:33, 3:17] = rng.random((17, 21, 14)) < 0.9  # off-centre, touching no face
    sizes = np.array([0.8, 1.1, 2.0])
    weights = mask.astype(np.float64)
    background = ndimage.gaussian_filter(phi * weights, 4.0 / sizes, mode="constant") / np.maximum(
        ndimage.gaussian_filter(weights, 4.0 / sizes, mode="constant"), 1e-12)
    whole = np.where(mask, phi - background, 0.0).astype(np.float32)
    assert np.array_equal(P.highpass(phi, mask, sizes, 4.0), whole)
