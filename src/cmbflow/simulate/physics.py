"""MR physics of the simulator: tissue properties, dipole fields, GRE signal constants.

Susceptibilities are in ppm relative to water (CSF = 0); fields are relative offsets (ppm of B0).
A field offset ``dB`` (ppm) gives the phase ``paramagnetic_sign * 2 pi gamma_bar B0 dB TE``, so with
the default sign -1 paramagnetic sources produce negative phase where their field is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import qsm_forward

GAMMA_BAR_MHZ_PER_T = 42.577478518
#: Fat resonates 3.4 ppm below water: the scalp's fat acquires this extra phase.
FAT_SHIFT_PPM = -3.4
#: Air (sinuses, mastoid cells) relative to tissue.
AIR_CHI_PPM = 9.4
#: Extra R2* of iron in deep grey matter per ppm of iron susceptibility, at 3 T (s^-1 / ppm).
IRON_R2STAR_PER_PPM_3T = 200.0


@dataclass(frozen=True)
class Tissue:
    """GRE properties of one tissue class (``m0`` folds proton density and T1 weighting together)."""

    m0: float
    r2star_3t: float  # s^-1 at 3 T
    chi_ppm: float


TISSUES: dict[str, Tissue] = {
    "wm": Tissue(0.65, 21.0, -0.03),
    "gm": Tissue(0.80, 16.0, 0.0),
    "deep_gm": Tissue(0.75, 16.0, 0.0),  # plus the subject's iron (chi and R2*)
    "csf": Tissue(1.00, 4.0, 0.0),
    "skull": Tissue(0.0, 0.0, -2.0),  # cortical bone: no signal, diamagnetic
    "scalp": Tissue(1.50, 30.0, 0.6),  # subcutaneous fat: bright (short T1), chemically shifted
    "vein": Tissue(0.75, 50.0, 0.0),  # deoxygenated blood; chi per vein
    "flow_void": Tissue(0.05, 20.0, 0.0),  # fast arterial flow: spins leave before the echo
    "calcification": Tissue(0.15, 100.0, 0.0),  # chi per lesion
}


def cmb_tissue(chi_ppm: float) -> Tissue:
    """Haemosiderin core: low proton density and very high R2* that grows with iron load."""
    return Tissue(0.4, 250.0 + 250.0 * chi_ppm, chi_ppm)


def r2star(r2star_3t: float | npt.NDArray, b0_tesla: float) -> float | npt.NDArray:
    """R2* at field ``b0_tesla``: the susceptibility-driven part (~70 % at 3 T) scales with B0."""
    return r2star_3t * (0.3 + 0.7 * b0_tesla / 3.0)


def phase_per_ppm(b0_tesla: float, te_s: float, paramagnetic_sign: int) -> float:
    """Radians of phase per ppm of field offset at this B0 and TE, with the phase convention's sign."""
    return paramagnetic_sign * 2.0 * np.pi * GAMMA_BAR_MHZ_PER_T * b0_tesla * te_s


def dipole_field(
    chi: npt.NDArray[np.floating],
    voxel_size_mm: npt.ArrayLike,
    b0_direction: npt.ArrayLike,
) -> npt.NDArray[np.float32]:
    """Field offset (ppm, Lorentz-corrected) of a susceptibility map (ppm) by dipole convolution.

    Uses ``qsm_forward.generate_field``. qsm-forward 0.32 builds its k-space grid with meshgrid's
    "xy" indexing and so scales array axis 1 by ``voxel_size[0]`` and axis 0 by ``voxel_size[1]``;
    the sizes of axes 0 and 1 are swapped here to undo that (the B0 components are handled
    correctly). ``tests/test_simulate.py`` checks the result against the analytic sphere field on
    an anisotropic grid, so a fix upstream would show up there.
    """
    vs = np.asarray(voxel_size_mm, dtype=float)
    b0 = [float(v) for v in np.asarray(b0_direction, dtype=float)]
    field = qsm_forward.generate_field(np.asarray(chi, dtype=np.float64), voxel_size=[vs[1], vs[0], vs[2]], B0_dir=b0)
    return field.astype(np.float32)


def sphere_field(
    offsets_mm: tuple[npt.NDArray, npt.NDArray, npt.NDArray],
    radius_mm: float,
    chi_ppm: float,
    b0_direction: npt.ArrayLike,
) -> npt.NDArray[np.float32]:
    """Analytic field offset (ppm) of a uniformly magnetised sphere, Lorentz-corrected (0 inside).

    ``offsets_mm`` are the three broadcastable components of position minus centre in an
    orthonormal frame, ``b0_direction`` the unit B0 vector in that frame.
    """
    x, y, z = (np.asarray(o, dtype=np.float32) for o in offsets_mm)
    b = np.asarray(b0_direction, dtype=np.float32)
    r2 = np.maximum(x * x + y * y + z * z, np.float32(1e-12))
    along = x * b[0] + y * b[1] + z * b[2]
    cos2 = along * along / r2
    ratio3 = (np.float32(radius_mm * radius_mm) / r2) ** np.float32(1.5)
    field = np.float32(chi_ppm / 3.0) * ratio3 * (3.0 * cos2 - 1.0)
    return np.where(r2 > radius_mm * radius_mm, field, np.float32(0.0)).astype(np.float32)


def sphere_box_radius_mm(radius_mm: float, chi_ppm: float, rad_per_ppm: float, tolerance_rad: float) -> float:
    """Distance beyond which a sphere's field changes the phase by less than ``tolerance_rad``."""
    peak = abs(rad_per_ppm) * 2.0 / 3.0 * abs(chi_ppm)  # at the poles, on the surface
    return radius_mm * max(1.5, (peak / tolerance_rad) ** (1.0 / 3.0))


def cylinder_margin_mm(radius_mm: float, chi_ppm: float, rad_per_ppm: float, tolerance_rad: float) -> float:
    """Distance from a vein's axis beyond which its field changes the phase by less than the tolerance."""
    peak = abs(rad_per_ppm) * abs(chi_ppm) / 2.0  # cylinder across B0, on the surface
    return radius_mm * max(2.0, np.sqrt(peak / tolerance_rad))


def quadratic_terms(u: npt.NDArray, v: npt.NDArray, w: npt.NDArray) -> list[npt.NDArray]:
    """The nine non-constant monomials of degree <= 2 of three (normalised) coordinates."""
    return [u, v, w, u * u, v * v, w * w, u * v, u * w, v * w]


def occupancy(distance_mm: npt.NDArray, radius_mm: float, blur_mm: float) -> npt.NDArray[np.float32]:
    """Partial-volume fraction of a fine voxel inside a surface ``radius_mm`` from a centre or axis."""
    return np.clip((radius_mm - distance_mm) / blur_mm + 0.5, 0.0, 1.0).astype(np.float32)
