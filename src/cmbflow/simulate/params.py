"""What defines one simulated acquisition, and how each preset samples it from a seed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cmbflow.errors import InputError

#: What the ``shifted`` presets move beyond the training ranges: ``shifted`` all of them,
#: ``shifted-<family>`` that one alone (leave one family out).
SHIFTED_FAMILIES = ("protocol", "anatomy", "vessels")
PRESETS = ("tiny", "standard", "diverse", "training", "site", "shifted",
           *(f"shifted-{family}" for family in SHIFTED_FAMILIES))
PHASE_UNITS = ("rad", "arbitrary")
#: Voxel sizes of the `diverse` preset (the classifier's validation cohort): in-plane, slices.
DIVERSE_IN_PLANE_MM = (0.5, 1.0)
DIVERSE_SLICE_MM = (1.5, 3.0)
#: Protocols of the `training` preset: wider than the validation's, as wide as the scanners a core meets.
TRAINING_IN_PLANE_MM = (0.4, 1.2)
TRAINING_SLICE_MM = (1.0, 3.5)
MIN_VOXEL_MM3 = 0.45

_AXIS_OF_CODE = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@dataclass(frozen=True)
class SubjectParams:
    """Everything that defines one simulated acquisition (lengths in mm, times in s, chi in ppm).

    The lesion and vein *counts* and the ranges their sizes and susceptibilities are drawn from
    live here; where each one lies, and its exact size, is drawn by :func:`simulate_subject`.
    """

    voxel_size_mm: tuple[float, float, float]  # acquisition voxel edges, in array axis order
    orientation: str  # nibabel axis codes of the array axes, e.g. "RAS", "LPS", "PSR"
    b0_tesla: float
    te_s: float
    snr: float  # 99th percentile of the noise-free brain magnitude / noise sigma
    phase_units: str  # "rad" (float32 in [-pi, pi)) or "arbitrary" (int16 -4096..4095)
    paramagnetic_sign: int  # -1: positive field offset gives negative phase (cmbflow default)
    has_phase: bool
    n_cmb: int
    n_calcifications: int
    n_veins: int
    head_rotation_deg: tuple[float, float, float]  # about world x (pitch), y (roll), z (yaw)
    head_scale: float  # isotropic scale of the MNI152 head (the template is larger than most brains)
    head_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # slice stack tilt about world x, y, z
    cmb_diameter_mm: tuple[float, float] = (2.0, 5.0)
    cmb_chi_ppm: tuple[float, float] = (0.3, 1.5)
    calcification_diameter_mm: tuple[float, float] = (1.5, 4.0)
    calcification_chi_ppm: tuple[float, float] = (-0.6, -0.1)
    vein_chi_ppm: tuple[float, float] = (0.3, 0.45)
    cortical_vein_diameter_mm: tuple[float, float] = (0.8, 1.5)
    medullary_vein_diameter_mm: tuple[float, float] = (0.6, 1.0)
    deep_gm_chi_ppm: float = 0.1  # iron in basal ganglia and thalamus
    bias_amplitude: float = 0.2  # largest |log| of the multiplicative bias field in the head
    background_phase_rad: float = 15.0  # spread (1st-99th percentile) of the background phase in brain
    template_resolution_mm: int = 1  # MNI152 maps at 1 mm or block-averaged to 2 mm
    field_grid_mm: float = 2.0  # spacing of the grid on which the tissue field is convolved
    # Beyond one template and one scanner (the `training` preset; 0 or empty = off):
    warp_mm: float = 0.0  # largest displacement of a smooth random non-linear warp of the anatomy
    atrophy_mm: float = 0.0  # tissue lost at every CSF border (twice that at the ventricles)
    tissue_factors: tuple[tuple[str, float, float, float], ...] = ()  # (tissue, m0 x, R2* x, chi + ppm)
    ringing: float = 0.0  # fraction of k-space cut from each end of the in-plane axes (Gibbs ringing)
    ghosting: float = 0.0  # fraction of phase-encode lines acquired with the head moved (motion ghosts)
    named_mimic_p: float = 0.0  # chance of each physiological calcification, deep vein and flow void

    def __post_init__(self) -> None:
        codes = self.orientation
        if len(codes) != 3 or sorted(_AXIS_OF_CODE.get(c, -1) for c in codes) != [0, 1, 2]:
            raise InputError(f"orientation {codes!r} is not three axis codes, one from each of RL, AP, SI")
        if len(self.voxel_size_mm) != 3 or min(self.voxel_size_mm) <= 0:
            raise InputError(f"voxel_size_mm {self.voxel_size_mm} must be three positive lengths")
        if self.phase_units not in PHASE_UNITS:
            raise InputError(f"phase_units {self.phase_units!r} must be one of {PHASE_UNITS}")
        if self.paramagnetic_sign not in (-1, 1):
            raise InputError(f"paramagnetic_sign {self.paramagnetic_sign} must be -1 or +1")
        if self.b0_tesla <= 0 or self.te_s <= 0 or self.snr <= 0 or self.head_scale <= 0:
            raise InputError("b0_tesla, te_s, snr and head_scale must be positive")
        if min(self.n_cmb, self.n_calcifications, self.n_veins) < 0:
            raise InputError("lesion and vein counts must not be negative")
        if self.template_resolution_mm not in (1, 2):
            raise InputError(f"template_resolution_mm {self.template_resolution_mm} must be 1 or 2")
        if min(self.warp_mm, self.atrophy_mm, self.ringing, self.ghosting) < 0 or \
                max(self.ringing, self.ghosting) >= 0.5:
            raise InputError("warp_mm and atrophy_mm must not be negative; ringing and ghosting lie in [0, 0.5)")
        if not 0 <= self.named_mimic_p <= 1:
            raise InputError(f"named_mimic_p {self.named_mimic_p} is not a probability")


def _uniform(rng: np.random.Generator, lo: float, hi: float, decimals: int = 4) -> float:
    return round(float(rng.uniform(lo, hi)), decimals)


def _axial_orientation(rng: np.random.Generator, choices: tuple[str, ...]) -> str:
    return str(choices[int(rng.integers(len(choices)))])


def _any_orientation(rng: np.random.Generator) -> str:
    """A random permutation of the three world axes, each pointing either way."""
    pairs = [("R", "L"), ("A", "P"), ("S", "I")]
    order = rng.permutation(3)
    return "".join(pairs[a][int(rng.integers(2))] for a in order)


def _voxel_sizes(
    orientation: str, in_plane: float, slice_mm: float, slice_world_axis: int
) -> tuple[float, float, float]:
    """Voxel edges in array order: the thick edge on the array axis that runs along the slice direction."""
    a, b, c = (slice_mm if _AXIS_OF_CODE[code] == slice_world_axis else in_plane for code in orientation)
    return (a, b, c)


def _tissue_factors(rng: np.random.Generator) -> tuple[tuple[str, float, float, float], ...]:
    """Per-head proton density and R2* factors and susceptibility offsets of the brain tissues
    (CSF is the susceptibility reference): scanners, sequences and ages differ in all three."""
    return tuple(
        (name, _uniform(rng, 0.85, 1.15, 3), _uniform(rng, 0.75, 1.35, 3),
         0.0 if name == "csf" else _uniform(rng, -0.02, 0.02, 4))
        for name in ("wm", "gm", "deep_gm", "csf")
    )


def _lesion_count(rng: np.random.Generator, p_none: float, hi: int) -> int:
    """Many real scans have no microbleed; the rest have a few."""
    return 0 if rng.random() < p_none else int(rng.integers(1, hi + 1))


def sample_subject_params(rng: np.random.Generator, preset: str) -> SubjectParams:
    """Draw one subject's acquisition and anatomy parameters for a preset.

    ``tiny``: whole brain at 1.5x1.5x2.5 mm with a few lesions (fast workflow tests).
    ``standard``: 3 T mostly, 0.8-1.0 mm in-plane, 1.6-2.0 mm slices, radians, always phase.
    ``diverse``: wide ranges of resolution, field, TE, SNR, orientation and units; ~20 %
    magnitude-only (the validation cohort of the classifier: it has to cope with any of it).
    ``training``: ``diverse`` with more microbleeds, calcifications and veins per scan, so that
    each simulated scan gives the classifier more examples of each kind; wider ranges of vein
    size and susceptibility and of deep-grey-matter iron (mimics it must know beyond the validation's);
    wider protocols (in-plane 0.4-1.2 mm, slices 1-3.5 mm, TE 10-40 ms, SNR 6-40); and heads beyond
    the one template: a smooth non-linear warp, atrophy, per-head tissue properties, ringing and
    motion ghosts; and the named mimics (physiological calcifications, deep veins, flow voids).
    ``site``: one site outside the training ranges, for adapting the classifier to it (``cmbflow
    finetune``): 3 T, 1.1-1.25 mm in-plane and 3.2-3.6 mm slices (veins crossing them look like
    dots), long TE, low SNR, more veins of higher susceptibility, more iron in deep grey matter,
    smaller heads.

    ``shifted``: the classifier's test of generalisation (never trained on, chooses nothing): the
    ``training`` heads and mimics with the ranges it widened pushed beyond it: slices 3.5-4 mm and
    in-plane 0.35-0.39 or 1.22-1.3 mm, TE 40-50 ms, heads warped 5-7 mm with 1.5-2 mm atrophy,
    veins of 0.55-0.7 ppm and medullary veins 1.6-2 mm across, deep-grey-matter iron 0.25-0.35 ppm,
    every named mimic; SNR 12-30, the training's ringing and ghosts, either field strength, a
    quarter of the scans without phase. ``shifted-protocol``, ``shifted-anatomy`` and
    ``shifted-vessels`` (veins, iron and mimics) each go beyond in that family alone, with the same
    parameters elsewhere for a seed, so that a loss on ``shifted`` can be traced to its cause.

    The phase sign is the cmbflow default (paramagnetic negative) in every preset: it is a
    convention of the site, set once in the config, and the classifier sees signed phase.
    """
    if preset == "training":
        params = sample_subject_params(rng, "diverse")
        slice_axis = int(np.argmax(params.voxel_size_mm))
        in_plane = _uniform(rng, *TRAINING_IN_PLANE_MM, 2)
        # The thinnest slices only with coarser in-plane voxels: grids stay under ~25 M voxels.
        slice_mm = max(_uniform(rng, *TRAINING_SLICE_MM, 2), round(MIN_VOXEL_MM3 / in_plane**2 + 0.005, 2))
        voxel_size = tuple(slice_mm if a == slice_axis else in_plane for a in range(3))
        return replace(
            params,
            voxel_size_mm=voxel_size,  # type: ignore[arg-type]
            te_s=_uniform(rng, 0.010, 0.040, 5),
            snr=_uniform(rng, 6.0, 40.0, 2),
            n_cmb=int(rng.integers(5, 26)),
            n_calcifications=int(rng.integers(1, 7)),
            n_veins=int(rng.integers(10, 21)),
            vein_chi_ppm=(0.25, 0.55),
            cortical_vein_diameter_mm=(0.6, 3.0),
            medullary_vein_diameter_mm=(0.5, 1.6),
            deep_gm_chi_ppm=_uniform(rng, 0.03, 0.25),
            warp_mm=_uniform(rng, 0.0, 5.0, 2),
            atrophy_mm=0.0 if rng.random() < 0.4 else _uniform(rng, 0.3, 1.5, 2),
            tissue_factors=_tissue_factors(rng),
            ringing=0.0 if rng.random() < 0.6 else _uniform(rng, 0.05, 0.2, 3),
            ghosting=0.0 if rng.random() < 0.6 else _uniform(rng, 0.02, 0.1, 3),
            named_mimic_p=_uniform(rng, 0.2, 0.8, 2),
        )
    if preset == "shifted" or preset.startswith("shifted-"):
        return _shifted(rng, SHIFTED_FAMILIES if preset == "shifted" else (preset.removeprefix("shifted-"),))
    if preset == "tiny":
        orientation = _axial_orientation(rng, ("RAS", "LAS", "LPS"))
        return SubjectParams(
            voxel_size_mm=_voxel_sizes(orientation, 1.5, 2.5, 2),
            orientation=orientation,
            b0_tesla=3.0,
            te_s=_uniform(rng, 0.020, 0.025, 5),
            snr=_uniform(rng, 20.0, 30.0, 2),
            phase_units="rad",
            paramagnetic_sign=-1,
            has_phase=True,
            n_cmb=int(rng.integers(2, 5)),
            n_calcifications=1,
            n_veins=4,
            head_rotation_deg=(_uniform(rng, -6, 6, 2), _uniform(rng, -3, 3, 2), _uniform(rng, -3, 3, 2)),
            head_scale=_uniform(rng, 0.88, 0.95),
            head_shift_mm=tuple(_uniform(rng, -3, 3, 2) for _ in range(3)),  # type: ignore[arg-type]
            cmb_diameter_mm=(2.5, 5.0),
            deep_gm_chi_ppm=_uniform(rng, 0.05, 0.15),
            bias_amplitude=_uniform(rng, 0.1, 0.25),
            background_phase_rad=_uniform(rng, 3 * np.pi, 6 * np.pi),
            template_resolution_mm=2,
            field_grid_mm=3.0,
        )
    if preset == "standard":
        orientation = _axial_orientation(rng, ("RAS", "LAS", "LPS", "LPI"))
        return SubjectParams(
            voxel_size_mm=_voxel_sizes(orientation, _uniform(rng, 0.8, 1.0, 2), _uniform(rng, 1.6, 2.0, 2), 2),
            orientation=orientation,
            b0_tesla=3.0 if rng.random() < 0.85 else 1.5,
            te_s=_uniform(rng, 0.018, 0.030, 5),
            snr=_uniform(rng, 15.0, 35.0, 2),
            phase_units="rad",
            paramagnetic_sign=-1,
            has_phase=True,
            n_cmb=_lesion_count(rng, 0.15, 10),
            n_calcifications=int(rng.integers(0, 3)),
            n_veins=int(rng.integers(8, 15)),
            head_rotation_deg=(_uniform(rng, -12, 12, 2), _uniform(rng, -5, 5, 2), _uniform(rng, -5, 5, 2)),
            head_scale=_uniform(rng, 0.85, 0.97),
            head_shift_mm=tuple(_uniform(rng, -5, 5, 2) for _ in range(3)),  # type: ignore[arg-type]
            cmb_diameter_mm=(2.0, 5.0),
            deep_gm_chi_ppm=_uniform(rng, 0.05, 0.15),
            bias_amplitude=_uniform(rng, 0.1, 0.3),
            background_phase_rad=_uniform(rng, 3 * np.pi, 8 * np.pi),
        )
    if preset == "diverse":
        orientation = _any_orientation(rng)
        slice_world_axis = int(rng.choice(3, p=[0.2, 0.2, 0.6]))  # sagittal, coronal, axial slices
        in_plane = _uniform(rng, *DIVERSE_IN_PLANE_MM, 2)
        slice_mm = _uniform(rng, *DIVERSE_SLICE_MM, 2)
        oblique = (
            (_uniform(rng, -15, 15, 2), _uniform(rng, -5, 5, 2), 0.0) if rng.random() < 0.3 else (0.0, 0.0, 0.0)
        )
        return SubjectParams(
            voxel_size_mm=_voxel_sizes(orientation, in_plane, slice_mm, slice_world_axis),
            orientation=orientation,
            b0_tesla=3.0 if rng.random() < 0.5 else 1.5,
            te_s=_uniform(rng, 0.015, 0.040, 5),
            snr=_uniform(rng, 10.0, 40.0, 2),
            phase_units="rad" if rng.random() < 0.5 else "arbitrary",
            paramagnetic_sign=-1,
            has_phase=bool(rng.random() >= 0.2),
            n_cmb=_lesion_count(rng, 0.15, 15),
            n_calcifications=int(rng.integers(0, 5)),
            n_veins=int(rng.integers(6, 17)),
            head_rotation_deg=(_uniform(rng, -15, 15, 2), _uniform(rng, -8, 8, 2), _uniform(rng, -8, 8, 2)),
            head_scale=_uniform(rng, 0.8, 1.0),
            head_shift_mm=tuple(_uniform(rng, -8, 8, 2) for _ in range(3)),  # type: ignore[arg-type]
            oblique_deg=oblique,
            cmb_diameter_mm=(1.0, 5.0),
            deep_gm_chi_ppm=_uniform(rng, 0.05, 0.15),
            bias_amplitude=_uniform(rng, 0.05, 0.4),
            background_phase_rad=_uniform(rng, 2 * np.pi, 10 * np.pi),
        )
    if preset == "site":
        orientation = _axial_orientation(rng, ("RAS", "LPS"))
        return SubjectParams(
            voxel_size_mm=_voxel_sizes(orientation, _uniform(rng, 1.1, 1.25, 2), _uniform(rng, 3.2, 3.6, 2), 2),
            orientation=orientation,
            b0_tesla=3.0,
            te_s=_uniform(rng, 0.035, 0.045, 5),
            snr=_uniform(rng, 10.0, 18.0, 2),
            phase_units="rad",
            paramagnetic_sign=-1,
            has_phase=True,
            n_cmb=int(rng.integers(3, 11)),
            n_calcifications=int(rng.integers(0, 3)),
            n_veins=int(rng.integers(16, 25)),
            head_rotation_deg=(_uniform(rng, -10, 10, 2), _uniform(rng, -5, 5, 2), _uniform(rng, -5, 5, 2)),
            head_scale=_uniform(rng, 0.78, 0.85),
            head_shift_mm=tuple(_uniform(rng, -5, 5, 2) for _ in range(3)),  # type: ignore[arg-type]
            cmb_diameter_mm=(2.0, 6.0),
            vein_chi_ppm=(0.45, 0.6),
            deep_gm_chi_ppm=_uniform(rng, 0.18, 0.28),
            bias_amplitude=_uniform(rng, 0.2, 0.4),
            background_phase_rad=_uniform(rng, 4 * np.pi, 10 * np.pi),
        )
    raise InputError(f"unknown simulator preset {preset!r}", fix=f"use one of {', '.join(PRESETS)}")


def _shifted(rng: np.random.Generator, families: tuple[str, ...]) -> SubjectParams:
    """A ``training`` head pushed beyond the training ranges in ``families`` (of
    :data:`SHIFTED_FAMILIES`). Every family's values are drawn whichever are applied, so one seed
    gives the same parameters in every ``shifted`` preset but for those families (where the bleeds
    fall still depends on the anatomy)."""
    params = sample_subject_params(rng, "training")
    slice_axis = int(np.argmax(params.voxel_size_mm))
    in_plane = _uniform(rng, 0.35, 0.39, 2) if rng.random() < 0.3 else _uniform(rng, 1.22, 1.3, 2)
    slice_mm = _uniform(rng, 3.5, 4.0, 2)
    if in_plane < 0.5:  # keep the grid under ~25 M voxels, as the training preset does
        slice_mm = max(slice_mm, round(MIN_VOXEL_MM3 / in_plane**2 + 0.005, 2))
    # Beyond the training on one protocol axis at a time (with every degradation at once, stage 1
    # found 46 % of the bleeds: a test of the scanner, not of the classifier).
    protocol = {"voxel_size_mm": tuple(slice_mm if a == slice_axis else in_plane for a in range(3)),
                "te_s": _uniform(rng, 0.040, 0.050, 5)}
    common = {"snr": _uniform(rng, 12.0, 30.0, 2), "has_phase": bool(rng.random() >= 0.25),
              "n_cmb": int(rng.integers(2, 11))}
    vessels = {"vein_chi_ppm": (0.55, 0.7), "medullary_vein_diameter_mm": (1.6, 2.0),
               "deep_gm_chi_ppm": _uniform(rng, 0.25, 0.35), "named_mimic_p": 1.0}
    anatomy = {"warp_mm": _uniform(rng, 5.0, 7.0, 2), "atrophy_mm": _uniform(rng, 1.5, 2.0, 2)}
    beyond = {"protocol": protocol, "anatomy": anatomy, "vessels": vessels}
    chosen = {name: value for family in families for name, value in beyond[family].items()}
    return replace(params, **common, **chosen)  # type: ignore[arg-type]
