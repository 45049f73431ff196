"""Anatomy stage: bias correction, brain mask and registration to MNI space (antspyx in-process).

ANTs works in LPS physical space while NIfTI affines (and cmbflow) use RAS+; images cross between
the two here, points in :mod:`cmbflow.transforms`, so transforms written by ANTs are used with
:func:`cmbflow.transforms.points_to_mni` rather than applied to RAS coordinates by hand.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# ITK's threaded Mattes mutual information adds up per-thread partial sums in whatever order the
# threads finish, so registrations on 2 threads differ between reruns (measured: up to 0.14 mm).
# ITK reads this variable once, at its first threaded call, so it must be set before any ANTs use;
# it makes N4 single-threaded too (N4 is deterministic either way, but we cannot set it per call).
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

import ants  # noqa: E402
import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from skimage.filters import threshold_multiotsu

from cmbflow.derivatives import MNI_SPACE
from cmbflow.errors import InputError
from cmbflow.image import voxel_sizes
from cmbflow.transforms import ALIGNMENT_SHIFT_MM, MIN_ALIGNMENT, RAS_TO_LPS, Transforms, transform_paths

#: Fixed seed for ANTs' random metric sampling: reruns must give identical transforms.
_ANTS_SEED = 20240601

BRAIN_MASK_METHODS = ("auto", "template", "deepbet", "intensity")
TRANSFORMS = ("affine", "syn")


# --------------------------------------------------------------------------- conversion


def to_ants(img: nib.Nifti1Image) -> ants.ANTsImage:
    """A nibabel 3D image as an ANTs image occupying exactly the same place in the world."""
    affine = np.asarray(img.affine, dtype=float)
    spacing = voxel_sizes(affine)
    direction = RAS_TO_LPS @ affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        # ITK stores direction cosines + spacing, so a sheared affine has no exact ANTs twin.
        raise InputError(
            "affine has shear, which ANTs images cannot represent",
            fix="resample the image to a grid without shear before running",
        )
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise InputError(f"expected a 3D image, got shape {data.shape}", fix="provide a 3D volume")
    return ants.from_numpy(
        data,
        origin=(RAS_TO_LPS @ affine[:3, 3]).tolist(),
        spacing=spacing.tolist(),
        direction=direction,
    )


def from_ants(image: ants.ANTsImage, dtype: npt.DTypeLike = np.float32) -> nib.Nifti1Image:
    """An ANTs 3D image as a nibabel image with the equivalent RAS+ affine."""
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(image.origin)
    out = nib.Nifti1Image(image.numpy().astype(dtype), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def _mask_to_ants(mask: npt.ArrayLike, like: ants.ANTsImage) -> ants.ANTsImage:
    """A boolean array on ``like``'s grid as an ANTs float image of 0/1."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(like.shape):
        raise InputError(f"mask shape {mask.shape} differs from the image shape {tuple(like.shape)}")
    return ants.new_image_like(like, mask.astype(np.float32))


# --------------------------------------------------------------------------- template


@lru_cache(maxsize=4)
def _template(resolution_mm: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """nilearn's bundled MNI152 brain-only T1 template and its brain mask (offline, no download)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution_mm)
    mask = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    t1 = nib.Nifti1Image(t1.get_fdata(dtype=np.float32), t1.affine)
    mask = nib.Nifti1Image(mask.get_fdata(dtype=np.float32), mask.affine)
    return t1, mask


# --------------------------------------------------------------------------- bias correction


def n4_bias_correct(
    img: nib.Nifti1Image,
    mask: npt.ArrayLike | None = None,
    shrink: int | None = None,
) -> nib.Nifti1Image:
    """N4 bias-field correction; the field is fitted inside ``mask`` (default: the head mask).

    ``shrink`` (default: whatever makes the fitting grid's voxels ~240 mm^3, e.g. 6 for
    0.8x0.8x1.7 mm, 3 for 2x2x3 mm) sets the grid the field is fitted on, every ``shrink``-th
    voxel; N4's cost grows with its number of voxels. The B-spline knots
    start 200 mm apart and are refined twice (to 50 mm): receive-coil bias varies on that scale,
    and finer meshes start to fit anatomy. On a phantom with a known field the log-bias left in
    the brain fell from 0.148 to 0.029 (std) with these settings, but only to 0.11 with ANTs'
    usual 4 levels from 100 mm (12.5 mm knots).

    The field comes back on the fitting grid and is interpolated to full resolution
    (:func:`upsample_field`) rather than evaluated there by ANTs: that took 2-7 s per scan on one
    thread, for a field that is smooth on a 50 mm scale. The corrected image differs from ANTs'
    own shrink-and-evaluate by 0.5-1.3 % (mean, in the brain, after the overall scale), as much
    as ANTs' result moves when its shrink factor changes by one (benchmarks/RESULTS.md).
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    if mask is None:
        mask = head_mask(img)
    if shrink is None:
        voxel_mm3 = float(np.prod(voxel_sizes(img.affine)))
        shrink = max(1, int(round((240.0 / voxel_mm3) ** (1 / 3))))
    grid = _subsample(data.shape, int(shrink))
    image = to_ants(nib.Nifti1Image(data, img.affine).slicer[grid])  # nibabel strides the affine too
    field = ants.n4_bias_field_correction(
        image,
        mask=_mask_to_ants(np.asarray(mask, dtype=bool)[grid], image),
        shrink_factor=1,
        spline_param=200.0,
        convergence={"iters": [25, 25, 25], "tol": 1e-7},
        return_bias_field=True,
    ).numpy()
    log_field = upsample_field(np.log(np.maximum(field, 1e-6)), grid, data.shape)
    return nib.Nifti1Image(data / np.exp(log_field).astype(np.float32), img.affine)


def _subsample(shape: tuple[int, ...], step: int) -> tuple[slice, ...]:
    """Every ``step``-th voxel along each axis, with equal margins at both ends."""
    return tuple(slice((n - 1) % step // 2, None, step) for n in shape)


def upsample_field(values: npt.NDArray, grid: tuple[slice, ...], shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """A smooth field sampled at the voxels ``grid`` of an image of ``shape``, back on every voxel:
    cubic-spline interpolation (extrapolation in the last few voxels), one axis at a time.
    """
    out = np.asarray(values, dtype=np.float64)
    for axis, (samples, n) in enumerate(zip(grid, shape)):
        at = np.arange(n)[samples]
        if len(at) == 1:
            weights = np.ones((n, 1))
        else:  # the spline through each unit vector: row v holds the weights of voxel v
            weights = make_interp_spline(at, np.eye(len(at)), k=min(3, len(at) - 1))(np.arange(n))
        out = np.moveaxis(np.tensordot(weights, out, axes=(1, axis)), 0, axis)
    return out


# --------------------------------------------------------------------------- masks


def head_mask(img: nib.Nifti1Image) -> npt.NDArray[np.bool_]:
    """Everything that is not background air: Otsu on log intensity, holes filled, largest blob."""
    log = _log_intensity(img)
    mask = ndimage.binary_opening(log > _otsu(log), iterations=1)
    # Fill before picking the largest blob: the scalp ring encloses a dark skull, so brain and
    # scalp are separate blobs until the skull between them is filled in.
    return _largest_component(_fill_holes_slicewise(mask))


def _log_intensity(img: nib.Nifti1Image) -> npt.NDArray[np.float32]:
    """Log of the voxel values, floored at the 1st percentile of the positive ones.

    Log compresses the bright tail (CSF at long TE, fat, vessels), so Otsu splits dark (air,
    skull) from tissue rather than bright CSF from the rest.
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    positive = data[data > 0]
    if positive.size == 0:
        raise InputError("image has no positive voxels", fix="check the magnitude export")
    return np.log(np.maximum(data, np.percentile(positive, 1)))


def brain_volume_ml(mask: npt.ArrayLike, affine: npt.NDArray[np.floating]) -> float:
    """Volume of a boolean mask in millilitres."""
    return float(np.count_nonzero(mask) * np.prod(voxel_sizes(affine)) / 1000.0)


def _otsu(values: npt.NDArray[np.floating], bins: int = 256) -> float:
    """Otsu threshold of a set of values."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


def _largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == np.argmax(sizes)


def _fill_holes_slicewise(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill holes in 3D and in every 2D slice along each axis.

    A 3D fill alone misses cavities that open at the edge of a partial field of view.
    """
    out = _fill_holes(mask, ndimage.generate_binary_structure(3, 1))
    for axis in range(3):
        in_slice = np.zeros((3, 3, 3), bool)  # 4-connected within the slices across ``axis``
        np.moveaxis(in_slice, axis, 0)[1] = ndimage.generate_binary_structure(2, 1)
        out |= _fill_holes(out, in_slice, skip_axis=axis)
    return out


def _fill_holes(
    mask: npt.NDArray[np.bool_], structure: npt.NDArray[np.bool_], skip_axis: int | None = None
) -> npt.NDArray[np.bool_]:
    """``ndimage.binary_fill_holes``, by labelling: a hole is a background component that touches
    no face of the volume (with ``skip_axis``, no face along the other axes: every slice along
    that axis at once). The same voxels, in one pass instead of one call per slice (seconds on
    0.5 mm scans)."""
    labels, n = ndimage.label(~mask, structure=structure)
    outside = np.zeros(n + 1, bool)
    for axis in range(3):
        if axis != skip_axis:
            outside[np.take(labels, [0, -1], axis=axis)] = True
    outside[0] = True
    return mask | ~outside[labels]


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_to_mni`."""

    transforms: Transforms
    #: Entropy correlation coefficient (normalised mutual information, 0 = unrelated,
    #: 1 = one image determines the other) of warped subject vs template in the template brain.
    similarity: float
    #: That similarity over its mean with the warped subject moved 6 mm along each axis
    #: (:func:`alignment_ratio`): how much better this fit is than a near miss, whatever the contrast.
    alignment: float
    #: The subject image resampled onto the MNI template grid.
    warped: nib.Nifti1Image


def register_to_mni(
    img: nib.Nifti1Image,
    mask: npt.ArrayLike,
    out_prefix: str | Path,
    transform: str = "affine",
    resolution_mm: int = 2,
) -> RegistrationResult:
    """Register a subject image, skull-stripped with ``mask``, to nilearn's MNI152 brain template.

    ``transform`` is ``"affine"`` or ``"syn"`` (the same affine followed by a quick SyN).
    The metric is Mattes mutual information, as the contrasts differ (GRE vs T1). Writes
    ``{out_prefix}affine.mat`` (+ ``warp.nii.gz`` and ``inverse-warp.nii.gz`` for SyN); with a
    fixed seed and one ITK thread (see the top of this module) reruns give identical files.
    """
    if transform not in TRANSFORMS:
        raise InputError(f"unknown registration transform {transform!r}", fix=f"use one of {TRANSFORMS}")
    template, template_mask = _template(resolution_mm)
    fixed = to_ants(template)
    moving = to_ants(img)
    # The template is brain-only, so the subject must be too: with skull and scalp left in,
    # the affine scales the template brain onto the whole head (measured Dice 0.69).
    moving = moving * _mask_to_ants(mask, moving)
    with tempfile.TemporaryDirectory(prefix="cmbflow_ants_") as tmp:
        reg = ants.registration(
            fixed,
            moving,
            type_of_transform="SyN" if transform == "syn" else "Affine",
            outprefix=str(Path(tmp) / "reg_"),
            random_seed=_ANTS_SEED,
            mask=_mask_to_ants(_near_brain(resolution_mm), fixed),
            mask_all_stages=True,
        )
        transforms = _store_transforms(reg, out_prefix)
    warped = reg["warpedmovout"]
    brain = template_mask.get_fdata() > 0.5
    similarity = _entropy_correlation(warped.numpy(), fixed.numpy(), brain)
    alignment = alignment_ratio(warped.numpy(), fixed.numpy(), brain, round(ALIGNMENT_SHIFT_MM / resolution_mm))
    return RegistrationResult(transforms, similarity, alignment, from_ants(warped))


@lru_cache(maxsize=4)
def _near_brain(resolution_mm: int, margin_mm: float = 12.0) -> npt.NDArray[np.bool_]:
    """The template brain and ``margin_mm`` around it: where the registration metric is sampled.

    The brain's edge and inside drive the fit; the empty rest of the template box adds samples
    that hold no anatomy. On 10 simulated heads (seed 1800) the mask + registration time fell
    from 6.8 to 4.2 s, the brain mask's Dice rose from 0.982 to 0.987 and the MNI error at the
    true microbleeds fell from 0.76 to 0.55 mm. A 6 mm margin did as well there but lost one of
    8 heads at SNR 6-7 (Dice 0.86); with 12 mm those 8 kept a Dice of 0.970 (0.969 without the
    mask). Figures: benchmarks/RESULTS.md.
    """
    brain = _template(resolution_mm)[1].get_fdata() > 0.5
    return ndimage.distance_transform_edt(~brain, sampling=float(resolution_mm)) <= margin_mm


def _store_transforms(reg: dict, out_prefix: str | Path) -> Transforms:
    """Move ANTs' output files (named by ANTs) to stable names under ``out_prefix``."""
    paths = transform_paths(out_prefix)
    paths["affine"].parent.mkdir(parents=True, exist_ok=True)
    fwd = list(reg["fwdtransforms"])
    inv = list(reg["invtransforms"])
    affine = next(f for f in fwd if f.endswith(".mat"))
    shutil.move(affine, paths["affine"])
    warp = next((f for f in fwd if f.endswith("Warp.nii.gz")), None)
    inverse_warp = next((f for f in inv if f.endswith("InverseWarp.nii.gz")), None)
    if warp is None:
        for key in ("warp", "inverse_warp"):
            paths[key].unlink(missing_ok=True)  # stale SyN files from an earlier run
        return Transforms(paths["affine"])
    shutil.move(warp, paths["warp"])
    shutil.move(inverse_warp, paths["inverse_warp"])
    return Transforms(paths["affine"], paths["warp"], paths["inverse_warp"])


@dataclass(frozen=True)
class SessionRegistration:
    """Outcome of :func:`register_sessions`."""

    #: ``affine`` moves baseline points to follow-up points (the baseline is ANTs' fixed image).
    transforms: Transforms
    #: Entropy correlation coefficient (0 = unrelated, 1 = one image determines the other) of the
    #: follow-up resampled onto the baseline grid vs the baseline, inside the baseline brain mask.
    similarity: float


def register_sessions(
    baseline_mag: nib.Nifti1Image,
    baseline_mask: npt.ArrayLike,
    followup_mag: nib.Nifti1Image,
    followup_mask: npt.ArrayLike,
    out_prefix: str | Path,
    spacing_mm: float = 3.0,
) -> SessionRegistration:
    """Register a follow-up session rigidly to the baseline (same head, same contrast).

    Both brains (magnitudes times their masks) are smoothed and resampled to ``spacing_mm``: a
    rigid fit needs no fine detail (see :func:`cmbflow.anat._t1w_mask_on_magnitude`). The metric is
    ANTs' default for Rigid (Mattes mutual information), tolerant of the sessions' different bias
    fields. Writes ``{out_prefix}affine.mat``; the fixed seed and one ITK thread (set by
    :mod:`cmbflow.anat`) make reruns identical.
    """
    fixed = to_ants(baseline_mag)
    fixed = fixed * _mask_to_ants(baseline_mask, fixed)
    moving = to_ants(followup_mag)
    moving = moving * _mask_to_ants(followup_mask, moving)
    with tempfile.TemporaryDirectory(prefix="cmbflow_sessions_") as tmp:
        reg = ants.registration(
            _coarse(fixed, spacing_mm), _coarse(moving, spacing_mm), type_of_transform="Rigid",
            outprefix=str(Path(tmp) / "rigid_"), random_seed=_ANTS_SEED,
        )
        transforms = _store_transforms(reg, out_prefix)
    warped = ants.apply_transforms(fixed, moving, [str(transforms.affine)], interpolator="linear")
    similarity = _entropy_correlation(warped.numpy(), fixed.numpy(), np.asarray(baseline_mask, dtype=bool))
    return SessionRegistration(transforms, similarity)


def _entropy_correlation(a: npt.NDArray, b: npt.NDArray, mask: npt.NDArray[np.bool_], bins: int = 32) -> float:
    """Entropy correlation coefficient 2*(1 - H(a,b)/(H(a)+H(b))) of two images inside a mask.

    Contrast-independent (a GRE magnitude against a T1 template), and bounded in [0, 1].
    """
    a, b = a[mask], b[mask]
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()

    def entropy(q: npt.NDArray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_a, h_b, h_ab = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p)
    return 2.0 * (1.0 - h_ab / (h_a + h_b)) if h_a + h_b > 0 else 0.0


def alignment_ratio(moved: npt.NDArray, fixed: npt.NDArray, mask: npt.NDArray[np.bool_], shift: int) -> float:
    """Entropy correlation of ``moved`` and ``fixed`` in ``mask``, over its mean with ``moved``
    shifted by ``shift`` voxels either way along each axis.

    The absolute similarity falls with the contrast's distance from the template's (good
    registrations scored 0.21-0.36 in-domain, down to 0.125 at low SNR and 0.065-0.16 at TE
    40-50 ms); this ratio does not, as both terms share the contrast: good ones 2.1-5.8, failed
    ones 1.1-1.6 (benchmarks/RESULTS.md).
    """
    aligned = _entropy_correlation(moved, fixed, mask)
    missed = [_entropy_correlation(np.roll(moved, step, axis=axis), fixed, mask)
              for axis in range(moved.ndim) for step in (-shift, shift)]
    return aligned / max(float(np.mean(missed)), 1e-6)


def mni_to_subject_image(
    mni_img: nib.Nifti1Image,
    subject: nib.Nifti1Image,
    transforms: Transforms | RegistrationResult,
    interpolator: str = "linear",
) -> nib.Nifti1Image:
    """Resample an image in MNI space (template, mask, atlas) onto the subject grid."""
    files, invert = _as_transforms(transforms).mni_to_subject()
    out = ants.apply_transforms(
        to_ants(subject), to_ants(mni_img), files, interpolator=interpolator, whichtoinvert=invert
    )
    return from_ants(out)


def _as_transforms(transforms: Transforms | RegistrationResult) -> Transforms:
    return transforms.transforms if isinstance(transforms, RegistrationResult) else transforms


# --------------------------------------------------------------------------- brain mask


def brain_mask_and_registration(
    magnitude: nib.Nifti1Image,
    t1w: nib.Nifti1Image | None,
    out_prefix: str | Path,
    method: str = "auto",
    transform: str = "affine",
) -> tuple[npt.NDArray[np.bool_], RegistrationResult]:
    """Boolean brain mask on the magnitude grid and the subject's registration to MNI, from one
    registration; ``magnitude`` should be bias-corrected. Transform files as in :func:`register_to_mni`
    (``registration.transforms`` names them).

    ``method``:
      * ``"auto"`` (default): ``"deepbet"`` when a T1w is given, else ``"template"``.
      * ``"template"``: rough intensity skull strip, register that brain to the MNI template
        (``transform``), pull the template's brain mask back onto the subject. Needs no
        particular contrast and cannot leak into scalp, eyes or sinuses. That registration is
        also the subject's: registering again with the finer mask moved the MARS region of no
        true microbleed (``benchmarks/RESULTS.md``) and cost a second registration.
      * ``"deepbet"``: the deepbet network (trained on T1w) on the T1w when given (then moved
        onto the magnitude by a rigid registration), else on the magnitude itself.
      * ``"intensity"``: threshold, erode to cut the brain free of the scalp, keep the
        largest blob, dilate back inside the threshold, fill holes (fast, no registration).
      With the last two, the brain they give is registered to MNI.
    """
    if method not in BRAIN_MASK_METHODS:
        raise InputError(f"unknown brain mask method {method!r}", fix=f"use one of {BRAIN_MASK_METHODS}")
    if method == "auto":
        method = "template" if t1w is None else "deepbet"
    if method == "template":
        # The rough mask only has to be good enough for the registration; the boundary then
        # comes from the template, which is immune to local contrast (bright CSF rim, dropout).
        # Both work on a 1.5 mm copy: the template is 2 mm, and on a 0.5 mm scan mask and
        # registration took 35 s at full resolution, 11 s with the copy (brain-mask Dice 0.0025
        # lower on average, benchmarks/RESULTS.md).
        coarse = from_ants(_coarse(to_ants(magnitude), 1.5))
        registration = register_to_mni(coarse, _intensity_brain_mask(coarse), out_prefix, transform)
        if registration.alignment < MIN_ALIGNMENT:
            # The rough strip failed, as on a long-TE magnitude without skull or scalp signal, whose
            # white matter it takes for skull: then the whole head is the brain. Kept if it fits better.
            retry = register_to_mni(coarse, head_mask(coarse), f"{out_prefix}head_", transform)
            registration = max(registration, retry, key=lambda r: r.alignment)
        _, mask_1mm = _template(1)
        pulled = mni_to_subject_image(mask_1mm, magnitude, registration, interpolator="linear")
        return np.asarray(pulled.dataobj) > 0.5, registration
    if method == "intensity":
        mask = _intensity_brain_mask(magnitude)
    elif t1w is None:
        mask = _deepbet(magnitude)
    else:
        mask = _t1w_mask_on_magnitude(_deepbet(t1w), t1w, magnitude)
    return mask, register_to_mni(magnitude, mask, out_prefix, transform)


def _intensity_brain_mask(magnitude: nib.Nifti1Image, erode_mm: float = 4.0) -> npt.NDArray[np.bool_]:
    head = head_mask(magnitude)
    log = _log_intensity(magnitude)
    # In log space, and the lower of three Otsu classes: skull | tissue | bright CSF and fat. On
    # linear values Otsu split off only the bright CSF at TE 34 ms / SNR 12 (Dice 0.03 against
    # 0.92 in log space); with two classes in log space it did the same at TE 40-50 ms with
    # atrophy, where tissue is darker than the scalp (rough brain 280-510 ml of 1,050-1,730, then
    # a failed registration: brain-mask Dice 0.52-0.59 on 2 of 20 `shifted` scans).
    tissue = head & (log > threshold_multiotsu(log[head], classes=3)[0])
    sampling = voxel_sizes(magnitude.affine)
    # Erosion by distance (mm, anisotropy-aware) breaks the thin bridges across the dark skull.
    core = _largest_component(ndimage.distance_transform_edt(tissue, sampling=sampling) > erode_mm)
    grown = ndimage.distance_transform_edt(~core, sampling=sampling) <= erode_mm + 0.5
    return _fill_holes_slicewise(grown & head)


def _deepbet(img: nib.Nifti1Image) -> npt.NDArray[np.bool_]:
    """deepbet's mask on the grid of ``img`` (weights ship with the package; CPU only)."""
    from deepbet.bet import BrainExtraction

    image = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    # Called on an in-memory image, deepbet skips its file-size sanity check.
    _, mask, _ = BrainExtraction(no_gpu=True).run(image)
    return np.asarray(mask.dataobj) > 0


def _t1w_mask_on_magnitude(
    mask: npt.NDArray[np.bool_], t1w: nib.Nifti1Image, magnitude: nib.Nifti1Image
) -> npt.NDArray[np.bool_]:
    """Move a T1w-space mask onto the magnitude grid via a rigid T1w -> magnitude registration.

    Both scans come from one session, but the head may have moved between them. A rigid fit
    needs no fine detail, so both images go in at 3 mm (1.5 s on the test phantom, same mask
    Dice as at 2 mm; with the full-resolution 0.9x0.9x1.8 mm magnitude it took 30 s).
    """
    fixed = to_ants(magnitude)
    moving = to_ants(t1w)
    with tempfile.TemporaryDirectory(prefix="cmbflow_rigid_") as tmp:
        reg = ants.registration(
            _coarse(fixed), _coarse(moving), type_of_transform="Rigid",
            outprefix=str(Path(tmp) / "rigid_"), random_seed=_ANTS_SEED,
        )
        moved = ants.apply_transforms(
            fixed, _mask_to_ants(mask, moving), reg["fwdtransforms"], interpolator="linear"
        )
    return moved.numpy() > 0.5


def _coarse(image: ants.ANTsImage, spacing_mm: float = 3.0) -> ants.ANTsImage:
    """Smoothed (sigma ``spacing_mm`` / 3) and resampled to isotropic ``spacing_mm``."""
    smooth = ants.smooth_image(image, spacing_mm / 3, sigma_in_physical_coordinates=True)
    return ants.resample_image(smooth, (spacing_mm,) * 3, use_voxels=False, interp_type=0)
