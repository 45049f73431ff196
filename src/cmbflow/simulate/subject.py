"""Simulate one subject's GRE magnitude and phase, with the truth, in memory (no I/O).

How the signal is built (hybrid grids: a whole-head sub-millimetre grid would need ~60 M voxels
and 2x-padded FFT arrays of >8 GB each; this scheme needs ~1.6 GB and ~10-20 s for a standard subject):

1. Anatomy: the MNI152 tissue maps are resampled (trilinear) through the head pose onto the
   acquisition grid; CSF rim, skull and scalp are shells at set distances from the brain surface.
2. Smooth field: tissue susceptibility is block-averaged onto a ~2 mm grid in the acquisition
   axes and convolved with the dipole kernel (``qsm_forward.generate_field``, B0 = world z), then
   interpolated back; air cavities (sinus, mastoids) add analytic sphere fields; a random
   quadratic background field adds several radians, so the phase wraps.
3. Voxels away from lesions and veins: tissue signal times the smooth field's phase; intravoxel
   dephasing from that field's gradient is the sinc of the phase change across the voxel.
4. Voxels near lesions and veins (the fine region): each voxel is split into sub-voxels of at
   most 0.6 mm; lesion fields are analytic spheres, vein fields come from dipole convolution of the
   vein's susceptibility in local fine boxes (pieces of ~10 mm, summed, since fields superpose);
   the complex signal is averaged over the sub-voxels, which gives blooming that grows with TE
   and B0. A lesion's or vein's box extends until its field changes the phase by < 0.05 rad.
5. Smooth multiplicative bias, receiver phase, complex Gaussian noise, magnitude and phase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage as ndi

from cmbflow.image import b0_direction_voxel, ijk_to_xyz, xyz_to_ijk
from cmbflow.simulate import physics
from cmbflow.simulate.anatomy import Lesion, MniCanvas, Vein, mni_canvas, place_lesions, place_veins
from cmbflow.simulate.geometry import MNI_HEAD_CENTRE, Warp, acquisition_grid, draw_warp, world_from_mni
from cmbflow.simulate.mimics import draw_named_mimics
from cmbflow.simulate.nuclei import IronNucleus, draw_nuclei, iron_map
from cmbflow.simulate.params import SubjectParams

#: Largest edge (mm) of the sub-voxels over which the signal is averaged near lesions and veins.
FINE_VOXEL_MM = 0.6
#: A lesion's or vein's field is followed until it changes the phase by less than this.
PHASE_TOLERANCE_RAD = 0.05
#: Veins are convolved in pieces of about this length.
VEIN_PIECE_MM = 10.0
#: The noise-free brain magnitude's 99th percentile is scaled to this value.
MAGNITUDE_PEAK = 1000.0
#: Air cavities (MNI centre, radius in mm): sphenoid/ethmoid sinus and mastoid air cells.
AIR_CAVITIES_MNI = (((0.0, 32.0, -50.0), 10.0), ((-46.0, -30.0, -48.0), 7.0), ((46.0, -30.0, -48.0), 7.0))
#: Rows of the fine region processed at once (bounds memory: rows x sub-voxels complex values).
_CHUNK_SUBVOXELS = 4_000_000

TRUTH_COLUMNS = [
    "x", "y", "z", "i", "j", "k", "kind", "diameter_mm", "chi_ppm", "region", "hemisphere", "mni_x", "mni_y", "mni_z",
]


@dataclass(frozen=True, eq=False)
class SimulatedSubject:
    """One simulated acquisition: images on the acquisition grid plus the truth."""

    params: SubjectParams
    magnitude: npt.NDArray[np.float32]
    phase: npt.NDArray[np.float32] | npt.NDArray[np.int16] | None  # units per params.phase_units
    affine: npt.NDArray[np.float64]
    brain_mask: npt.NDArray[np.uint8]
    lesions: pd.DataFrame  # TRUTH_COLUMNS, one row per lesion
    realised: dict  # JSON-ready values drawn or derived during simulation


@dataclass(frozen=True, eq=False)
class Anatomy:
    """What one head is made of, in MNI space: drawn once, imaged in every session."""

    layers_mm: dict[str, float]  # CSF rim, skull and scalp thickness
    lesions: list[Lesion]  # in the order of their track ids (1, 2, ...)
    veins: list[Vein]
    nuclei: list[IronNucleus]  # both sides of every iron-rich nucleus
    warp: Warp | None = None  # how this head differs from the template, beyond its pose

    def to_world(self, head: npt.NDArray[np.float64], template_mni: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """World mm of template positions (N, 3) in this head, posed by ``head`` (MNI -> world)."""
        return _apply(head, template_mni if self.warp is None else self.warp.head_position(template_mni))


def simulate_subject(params: SubjectParams, rng: np.random.Generator) -> SimulatedSubject:
    """Simulate one subject from its parameters; all randomness comes from ``rng``.

    The sequence of draws does not depend on TE, B0, SNR or units, so two calls that differ only
    in those (with equally seeded generators) image the same head with the same lesions and noise.
    """
    return image_anatomy(params, draw_anatomy(params, rng), rng)


def draw_anatomy(params: SubjectParams, rng: np.random.Generator) -> Anatomy:
    """Draw a head's layers, lesions and veins (veins start along or across B0 in this pose)."""
    canvas = mni_canvas(params.template_resolution_mm)
    layers_mm = {
        "csf_rim": round(float(rng.uniform(1.5, 3.5)), 3),
        "skull": round(float(rng.uniform(4.0, 7.0)), 3),
        "scalp": round(float(rng.uniform(4.0, 8.0)), 3),
    }
    lesions = place_lesions(canvas, params, rng)
    veins = place_veins(canvas, params, lesions, world_from_mni(params), rng)
    nuclei = draw_nuclei(rng)
    warp = draw_warp(rng, params.warp_mm) if params.warp_mm > 0 else None
    if params.named_mimic_p > 0:
        named_lesions, named_veins = draw_named_mimics(params, lesions, veins, rng)
        lesions, veins = lesions + named_lesions, veins + named_veins
    return Anatomy(layers_mm, lesions, veins, nuclei, warp)


def image_anatomy(params: SubjectParams, anatomy: Anatomy, rng: np.random.Generator) -> SimulatedSubject:
    """Image a head in the pose and with the protocol of ``params``; ``rng`` draws the background
    field, bias, receiver phase and noise (a new session of the same head draws them anew)."""
    canvas = mni_canvas(params.template_resolution_mm)
    head = world_from_mni(params)
    scale = params.head_scale
    layers_mm, lesions, veins = anatomy.layers_mm, anatomy.lesions, anatomy.veins
    background_coeffs = rng.standard_normal(9)
    bias_coeffs = rng.standard_normal(9)
    receiver_phase = float(rng.uniform(-np.pi, np.pi))

    vs = np.asarray(params.voxel_size_mm, dtype=float)
    block = np.maximum(1, np.round(params.field_grid_mm / vs)).astype(int)
    head_extent = sum(layers_mm.values()) / scale  # MNI mm outside the brain surface
    points = canvas.head_points[canvas.head_points[:, 3] <= head_extent, :3].astype(float)
    affine, shape = acquisition_grid(params, anatomy.to_world(head, points), multiple_of=tuple(block))

    world = _world_coordinates(affine, shape)
    fractions, iron = _tissue_fractions(canvas, head, affine, shape, params, anatomy)
    air_centres = [(anatomy.to_world(head, np.asarray([c]))[0], r * scale) for c, r in AIR_CAVITIES_MNI]
    air_field = np.zeros(shape, np.float32)
    for centre, radius in air_centres:
        offsets = tuple(w - np.float32(c) for w, c in zip(world, centre))
        distance = np.sqrt(sum(o * o for o in offsets))
        inside = physics.occupancy(distance, radius, float(vs.mean()))
        for name in fractions:
            fractions[name] *= 1.0 - inside
        air_field += physics.sphere_field(offsets, radius, physics.AIR_CHI_PPM, (0.0, 0.0, 1.0))
        del offsets, distance, inside

    b0_grid = b0_direction_voxel(affine)
    rad_per_ppm = physics.phase_per_ppm(params.b0_tesla, params.te_s, params.paramagnetic_sign)
    brain = fractions["brain"] >= 0.5
    tissue_field = _tissue_field(fractions, iron, params, vs, block, b0_grid)
    background = _polynomial(world, head, background_coeffs)
    spread = np.subtract(*np.percentile(background[brain][::7], [99, 1]))
    background *= np.float32(params.background_phase_rad / (abs(rad_per_ppm) * max(spread, 1e-6)))
    smooth_field = tissue_field + air_field + background
    del tissue_field, air_field, background

    tissue_signal = _tissue_signal(fractions, iron, params, rad_per_ppm)
    del iron
    signal = tissue_signal * np.exp(1j * np.float32(rad_per_ppm) * smooth_field).astype(np.complex64)
    signal *= _intravoxel_dephasing(smooth_field, rad_per_ppm)
    fine = _FineRegion(shape, vs, b0_grid, params)
    lesion_ijk = [xyz_to_ijk(affine, anatomy.to_world(head, np.asarray([lesion.mni])))[0] for lesion in lesions]
    for lesion, ijk in zip(lesions, lesion_ijk):
        fine.add_sphere(lesion, ijk, rad_per_ppm)
    for vein in veins:
        fine.add_vein(vein, xyz_to_ijk(affine, anatomy.to_world(head, vein.points_mni)), rad_per_ppm)
    fine.render(signal, tissue_signal, smooth_field, rad_per_ppm)
    del smooth_field, tissue_signal

    bias = np.exp(np.float32(params.bias_amplitude) * _normalised(_polynomial(world, head, bias_coeffs), brain))
    signal *= (bias * np.exp(1j * receiver_phase)).astype(np.complex64)
    del bias, world
    signal = _artefacts(signal, affine, params, rng)
    peak = float(np.percentile(np.abs(signal[brain]), 99))
    signal *= np.float32(MAGNITUDE_PEAK / peak)
    sigma = MAGNITUDE_PEAK / params.snr
    signal.real += np.float32(sigma) * rng.standard_normal(shape, dtype=np.float32)
    signal.imag += np.float32(sigma) * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.abs(signal).astype(np.float32)
    phase = _encode_phase(np.angle(signal), params.phase_units) if params.has_phase else None
    del signal

    truth = _truth_table(lesions, lesion_ijk, affine)
    realised = {
        "params": _jsonable(asdict(params)),
        "affine": np.round(affine, 6).tolist(),
        "shape": list(shape),
        "world_from_mni": np.round(head, 6).tolist(),
        "fine_factors": fine.factors.tolist(),
        "field_grid_block": block.tolist(),
        "fine_region_voxels": int(fine.n_voxels),
        "layers_mm": layers_mm,
        "air_cavities": [{"xyz": np.round(c, 3).tolist(), "radius_mm": round(r, 3)} for c, r in air_centres],
        "receiver_phase_rad": round(receiver_phase, 6),
        "noise_sigma": round(sigma, 6),
        "magnitude_peak": MAGNITUDE_PEAK,
        "rad_per_ppm": round(rad_per_ppm, 6),
        "tissues": {name: asdict(t) for name, t in _tissues(params).items()},
        "warp": None if anatomy.warp is None else {k: np.round(v, 6).tolist() for k, v in asdict(anatomy.warp).items()},
        "n_cmb": int((truth["kind"] == "cmb").sum()),
        "n_calcifications": int((truth["kind"] == "calcification").sum()),
        "n_veins": len(veins),
        "veins": [_vein_record(v, anatomy.to_world(head, v.points_mni)) for v in veins],
        "iron_nuclei": [_nucleus_record(n, anatomy.to_world(head, np.asarray([n.centre_mni]))[0])
                        for n in anatomy.nuclei],
        "brain_volume_ml": round(float(brain.sum() * np.prod(vs)) / 1000.0, 3),
    }
    return SimulatedSubject(params, magnitude, phase, affine, brain.astype(np.uint8), truth, realised)


def _apply(matrix: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _along(values: npt.NDArray, axis: int) -> npt.NDArray:
    """A 1D array shaped to broadcast along ``axis`` of a 3D array."""
    return values.reshape([-1 if a == axis else 1 for a in range(3)])


def _world_coordinates(affine: npt.NDArray[np.float64], shape: tuple[int, int, int]) -> list[npt.NDArray[np.float32]]:
    """World x, y, z (float32) of every voxel centre."""
    axes = [_along(np.arange(n, dtype=np.float64), a) for a, n in enumerate(shape)]
    return [
        np.broadcast_to(sum(affine[w, a] * axes[a] for a in range(3)) + affine[w, 3], shape).astype(np.float32)
        for w in range(3)
    ]


def _tissue_fractions(
    canvas: MniCanvas,
    head: npt.NDArray[np.float64],
    affine: npt.NDArray[np.float64],
    shape: tuple[int, int, int],
    params: SubjectParams,
    anatomy: Anatomy,
) -> tuple[dict[str, npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """Partial-volume fraction of every tissue class in every acquisition voxel, and the iron of
    the deep nuclei there (ppm; in tissue only)."""
    if anatomy.warp is None:
        index_map = np.linalg.inv(canvas.affine) @ np.linalg.inv(head) @ affine

        def resample(volume: npt.NDArray[np.float32], cval: float = 0.0) -> npt.NDArray[np.float32]:
            return ndi.affine_transform(volume, index_map, output_shape=shape, order=1, mode="constant", cval=cval)
    else:
        index = _warped_template_index(canvas, np.linalg.inv(head) @ affine, shape, anatomy.warp)

        def resample(volume: npt.NDArray[np.float32], cval: float = 0.0) -> npt.NDArray[np.float32]:
            return ndi.map_coordinates(volume, index, order=1, mode="constant", cval=cval).reshape(shape)

    brain = resample(canvas.brain)
    gm, wm, deep = resample(canvas.gm), resample(canvas.wm), resample(canvas.deep_gm)
    sdist = resample(canvas.sdist, cval=1000.0)
    iron = iron_map(canvas.origin_mm, canvas.resolution_mm, canvas.gm.shape, anatomy.nuclei)
    iron = resample(iron * np.clip(canvas.gm + canvas.wm, 0, 1))
    if params.atrophy_mm > 0:
        # Tissue recedes from every CSF border: sulci widen, and the ventricles (deep below the
        # surface) twice as much. What tissue loses, CSF gains (the brain fraction stays).
        loss = np.float32(params.atrophy_mm) * (1 + np.clip(-sdist / np.float32(20.0), 0, 1))
        keep = np.clip(resample(canvas.tissue_depth) + 1 - loss, 0, 1)
        gm, wm, deep, iron = gm * keep, wm * keep, deep * keep, iron * keep
    outside = 1.0 - brain
    layers_mm, scale = anatomy.layers_mm, params.head_scale
    edges = np.cumsum([layers_mm["csf_rim"], layers_mm["skull"], layers_mm["scalp"]]) / scale
    within = [np.clip((edge - sdist) / canvas.resolution_mm + 0.5, 0, 1) for edge in edges]
    return {
        "brain": brain,
        "gm": gm - deep,
        "deep_gm": deep,
        "wm": wm,
        "csf": np.clip(brain - gm - wm, 0, None) + outside * within[0],
        "skull": outside * (within[1] - within[0]),
        "scalp": outside * (within[2] - within[1]),
    }, iron


def _warped_template_index(
    canvas: MniCanvas, mni_from_voxel: npt.NDArray[np.float64], shape: tuple[int, int, int], warp: Warp
) -> npt.NDArray[np.float32]:
    """Canvas voxel index (3, N) of the template position that every acquisition voxel images."""
    q = np.stack([c.ravel() for c in _world_coordinates(mni_from_voxel, shape)], axis=1)
    q += warp.displacement(q)
    return ((q - canvas.origin_mm.astype(np.float32)) / np.float32(canvas.resolution_mm)).T


def _tissues(params: SubjectParams) -> dict[str, physics.Tissue]:
    """This head's tissue table: the defaults with its proton density, R2* and susceptibility changes."""
    tissues = dict(physics.TISSUES)
    for name, m0, r2star, chi in params.tissue_factors:
        t = tissues[name]
        tissues[name] = physics.Tissue(t.m0 * m0, t.r2star_3t * r2star, t.chi_ppm + chi)
    return tissues


def _tissue_field(
    fractions: dict[str, npt.NDArray[np.float32]],
    iron: npt.NDArray[np.float32],
    params: SubjectParams,
    vs: npt.NDArray[np.float64],
    block: npt.NDArray[np.int_],
    b0_grid: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    """Field (ppm) of the tissue susceptibility, convolved on a coarser grid in the acquisition axes."""
    tissues = _tissues(params)
    chi = fractions["deep_gm"] * np.float32(params.deep_gm_chi_ppm + tissues["deep_gm"].chi_ppm) + iron
    for name in ("wm", "gm", "csf", "skull", "scalp"):
        chi += fractions[name] * np.float32(tissues[name].chi_ppm)
    b = block
    blocks = [(n // f, f) for n, f in zip(chi.shape, b)]
    coarse = chi.reshape([v for pair in blocks for v in pair]).mean(axis=(1, 3, 5))
    field = physics.dipole_field(coarse, vs * b, b0_grid)
    # Acquisition index i lies at coarse index (i - (b - 1) / 2) / b.
    return ndi.affine_transform(
        field, np.diag(1.0 / b), offset=-(b - 1) / (2.0 * b), output_shape=chi.shape, order=1, mode="nearest"
    )


def _polynomial(
    world: list[npt.NDArray[np.float32]], head: npt.NDArray[np.float64], coeffs: npt.NDArray
) -> npt.NDArray[np.float32]:
    """Random smooth field: quadratic in world coordinates centred on the head (80 mm units)."""
    centre = _apply(head, MNI_HEAD_CENTRE[None])[0]
    u, v, w = ((c - np.float32(o)) / np.float32(80.0) for c, o in zip(world, centre))
    out = np.zeros(u.shape, np.float32)
    for c, term in zip(coeffs, physics.quadratic_terms(u, v, w)):
        out += np.float32(c) * term
    return out


def _normalised(values: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Centre on the mask's mean and scale to a largest absolute value of 1 inside the mask."""
    values = values - np.float32(values[mask].mean())
    return values / np.float32(max(np.abs(values[mask]).max(), 1e-6))


def _tissue_signal(
    fractions: dict[str, npt.NDArray[np.float32]],
    iron: npt.NDArray[np.float32],
    params: SubjectParams,
    rad_per_ppm: float,
) -> npt.NDArray[np.complex64]:
    """Complex GRE signal of the voxel's tissue mixture before any field (fat carries its shift;
    the nuclei's iron its extra R2*)."""
    te, b0 = params.te_s, params.b0_tesla
    tissues = _tissues(params)
    signal = np.zeros(fractions["brain"].shape, np.complex64)
    for name in ("wm", "gm", "csf", "skull", "scalp"):
        tissue = tissues[name]
        weight = tissue.m0 * np.exp(-te * physics.r2star(tissue.r2star_3t, b0))
        if name == "scalp":
            weight = weight * np.exp(1j * rad_per_ppm * physics.FAT_SHIFT_PPM)
        signal += fractions[name] * np.complex64(weight)
    deep = tissues["deep_gm"]
    r2_deep = physics.r2star(deep.r2star_3t + physics.IRON_R2STAR_PER_PPM_3T * params.deep_gm_chi_ppm, b0)
    signal += fractions["deep_gm"] * np.complex64(deep.m0 * np.exp(-te * r2_deep))
    signal *= np.exp(np.float32(-te) * physics.r2star(physics.IRON_R2STAR_PER_PPM_3T * iron, b0)).astype(np.float32)
    return signal


def _artefacts(
    signal: npt.NDArray[np.complex64], affine: npt.NDArray[np.float64], params: SubjectParams,
    rng: np.random.Generator,
) -> npt.NDArray[np.complex64]:
    """Gibbs ringing (k-space cut at both ends of the in-plane axes) and motion ghosts (some
    phase-encode lines, periodic in acquisition order, recorded with the head shifted 1-3 mm)."""
    if not (params.ringing or params.ghosting):
        return signal
    in_plane = [a for a in range(3) if a != int(np.argmax(params.voxel_size_mm))]
    kspace = np.fft.fftn(signal)
    frequencies = [np.fft.fftfreq(n).astype(np.float32) for n in signal.shape]  # cycles per voxel
    if params.ringing:
        for a in in_plane:
            kspace *= _along(np.abs(frequencies[a]) < 0.5 - params.ringing, a)
    if params.ghosting:
        pe = in_plane[int(rng.integers(2))]
        period = int(rng.integers(4, 17))
        bad = (np.fft.ifftshift(np.arange(signal.shape[pe])) % period) < max(1, round(params.ghosting * period))
        direction = rng.standard_normal(3)
        shift_mm = direction / np.linalg.norm(direction) * rng.uniform(1.0, 3.0)
        shift_voxels = np.linalg.solve(affine[:3, :3], shift_mm)  # a world shift in array axes
        ramp = sum(_along(f, a) * np.float32(d) for a, (f, d) in enumerate(zip(frequencies, shift_voxels)))
        moved = np.exp(np.complex64(-2j * np.pi) * ramp)
        kspace = np.where(_along(bad, pe), kspace * moved, kspace)
    return np.fft.ifftn(kspace).astype(np.complex64)


def _intravoxel_dephasing(field: npt.NDArray[np.float32], rad_per_ppm: float) -> npt.NDArray[np.float32]:
    """Voxel average of exp(i phase) for a phase linear across the voxel, relative to its centre.

    A product of sincs, one per axis (negative beyond the first zero: the average flips sign).
    """
    factor = np.ones(field.shape, np.float32)
    for axis in range(3):
        across = np.gradient(field, axis=axis) * np.float32(abs(rad_per_ppm) / (2 * np.pi))
        factor *= np.sinc(across).astype(np.float32)
    return factor


@dataclass(frozen=True)
class _Sphere:
    box: tuple[slice, ...]  # acquisition voxels its field reaches
    centre_mm: npt.NDArray[np.float64]  # grid mm (index x voxel size)
    radius_mm: float
    chi_ppm: float
    tissue: physics.Tissue


@dataclass(frozen=True)
class _VeinPiece:
    box: tuple[slice, ...]
    points_mm: npt.NDArray[np.float64]  # the whole vein's centre line, grid mm
    first: int  # this piece owns segments first .. last-1
    last: int
    radius_mm: float
    chi_ppm: float
    tissue: physics.Tissue


class _FineRegion:
    """Sub-voxel signal near lesions and veins, kept only for the voxels their fields reach.

    Grid mm (voxel index x voxel size) is an orthonormal frame, so distances and the B0
    direction (``b0_direction_voxel``) can be used in it directly.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        vs: npt.NDArray[np.float64],
        b0: npt.NDArray[np.float64],
        params: SubjectParams,
    ):
        self.shape, self.vs, self.b0, self.params = shape, vs, b0, params
        self.factors = np.ceil(vs / FINE_VOXEL_MM - 1e-6).astype(int)
        self.n_sub = int(np.prod(self.factors))
        self.fine_vs = vs / self.factors
        self.blur = float(np.prod(self.fine_vs) ** (1 / 3))
        self.objects: list[_Sphere | _VeinPiece] = []
        self.n_voxels = 0

    def _box(self, lo_mm: npt.NDArray[np.float64], hi_mm: npt.NDArray[np.float64]) -> tuple[slice, ...]:
        """Voxel index slices covering the grid-mm range [lo, hi]."""
        lo = np.clip(np.floor(lo_mm / self.vs).astype(int), 0, self.shape)
        hi = np.clip(np.ceil(hi_mm / self.vs).astype(int) + 1, 0, self.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def add_sphere(self, lesion: Lesion, ijk: npt.NDArray[np.float64], rad_per_ppm: float) -> None:
        tissue = physics.cmb_tissue(lesion.chi_ppm) if lesion.kind == "cmb" else physics.TISSUES["calcification"]
        radius = lesion.diameter_mm / 2
        reach = physics.sphere_box_radius_mm(radius, lesion.chi_ppm, rad_per_ppm, PHASE_TOLERANCE_RAD)
        centre = ijk * self.vs
        self.objects.append(_Sphere(self._box(centre - reach, centre + reach), centre, radius, lesion.chi_ppm, tissue))

    def add_vein(self, vein: Vein, points_ijk: npt.NDArray[np.float64], rad_per_ppm: float) -> None:
        """Split the vein into ~10 mm pieces, each convolved in its own box."""
        points = points_ijk * self.vs
        radius = vein.diameter_mm / 2
        tissue = physics.TISSUES["flow_void" if vein.kind == "artery" else "vein"]
        reach = physics.cylinder_margin_mm(radius, vein.chi_ppm, rad_per_ppm, PHASE_TOLERANCE_RAD)
        step = np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
        n_segments = len(points) - 1
        per_piece = max(1, int(round(VEIN_PIECE_MM / step)))
        for first in range(0, n_segments, per_piece):
            last = min(first + per_piece, n_segments)
            own = points[first:last + 1]
            box = self._box(own.min(axis=0) - reach, own.max(axis=0) + reach)
            self.objects.append(_VeinPiece(box, points, first, last, radius, vein.chi_ppm, tissue))

    def _fine_axes(self, box: tuple[slice, ...]) -> list[npt.NDArray[np.float64]]:
        """Grid-mm coordinate of every sub-voxel centre along each axis, in fine-array order."""
        out = []
        for a, s in enumerate(box):
            f = self.factors[a]
            n = np.arange((s.stop - s.start) * f)
            out.append((s.start + (n + 0.5) / f - 0.5) * self.vs[a])
        return out

    def _to_rows(self, fine: npt.NDArray[np.float32], box: tuple[slice, ...]) -> npt.NDArray[np.float32]:
        """Fine-array layout (b0*f0, b1*f1, b2*f2) -> (voxels in box, sub-voxels)."""
        b = [s.stop - s.start for s in box]
        f = self.factors
        return fine.reshape(b[0], f[0], b[1], f[1], b[2], f[2]).transpose(0, 2, 4, 1, 3, 5).reshape(-1, self.n_sub)

    def _sphere(self, sphere: _Sphere) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Occupancy and analytic field of a lesion on its box's sub-voxels (fine-array layout)."""
        u = self._fine_axes(sphere.box)
        offsets = (u[0][:, None, None] - sphere.centre_mm[0], u[1][None, :, None] - sphere.centre_mm[1],
                   u[2][None, None, :] - sphere.centre_mm[2])
        distance = np.sqrt(offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2)
        occupancy = physics.occupancy(distance, sphere.radius_mm, self.blur)
        return occupancy, physics.sphere_field(offsets, sphere.radius_mm, sphere.chi_ppm, self.b0)

    def _vein_piece(self, piece: _VeinPiece) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Occupancy and dipole-convolved field of one vein piece (fine-array layout).

        A sub-voxel belongs to the piece whose segments are nearest, so the pieces tile the vein.
        """
        u = self._fine_axes(piece.box)
        grids = (u[0][:, None, None], u[1][None, :, None], u[2][None, None, :])
        shape = tuple(len(a) for a in u)
        neighbours = int(np.ceil(4.0 / VEIN_PIECE_MM * (piece.last - piece.first)))  # ~4 mm either side
        groups = {
            "own": range(piece.first, piece.last),
            "before": range(max(0, piece.first - neighbours), piece.first),
            "after": range(piece.last, min(len(piece.points_mm) - 1, piece.last + neighbours)),
        }
        nearest = {}
        for group, segments in groups.items():
            nearest[group] = np.full(shape, np.inf, np.float32)
            for m in segments:
                distance = _segment_distance(grids, piece.points_mm[m], piece.points_mm[m + 1])
                np.minimum(nearest[group], distance, out=nearest[group])
        owned = (nearest["own"] <= nearest["before"]) & (nearest["own"] < nearest["after"])
        occupancy = np.where(owned, physics.occupancy(nearest["own"], piece.radius_mm, self.blur), np.float32(0))
        return occupancy, physics.dipole_field(occupancy * np.float32(piece.chi_ppm), self.fine_vs, self.b0)

    def render(
        self,
        signal: npt.NDArray[np.complex64],
        tissue_signal: npt.NDArray[np.complex64],
        smooth_field: npt.NDArray[np.float32],
        rad_per_ppm: float,
    ) -> None:
        """Replace ``signal`` in the fine region by the sub-voxel average of the complex signal."""
        region = np.zeros(self.shape, bool)
        for obj in self.objects:
            region[obj.box] = True
        voxels = np.flatnonzero(region)
        self.n_voxels = len(voxels)
        if not len(voxels):
            return
        row_of = np.full(self.shape, -1, np.int32)
        row_of.flat[voxels] = np.arange(len(voxels), dtype=np.int32)
        field = np.zeros((len(voxels), self.n_sub), np.float32)
        occupied = np.zeros_like(field)
        own_signal = np.zeros_like(field)  # sum over objects of occupancy x the object's own signal
        te, b0 = self.params.te_s, self.params.b0_tesla
        for obj in self.objects:
            tissue = obj.tissue
            occupancy, obj_field = self._sphere(obj) if isinstance(obj, _Sphere) else self._vein_piece(obj)
            rows = row_of[obj.box].ravel()
            occupancy = self._to_rows(occupancy, obj.box)
            field[rows] += self._to_rows(obj_field, obj.box)
            occupied[rows] += occupancy
            own_signal[rows] += occupancy * np.float32(tissue.m0 * np.exp(-te * physics.r2star(tissue.r2star_3t, b0)))
        np.clip(occupied, 0, 1, out=occupied)

        offsets = [(np.arange(f) + 0.5) / f - 0.5 for f in self.factors]  # sub-voxel centres, voxel units
        sub = np.stack(np.meshgrid(*offsets, indexing="ij"), -1).reshape(-1, 3)
        k = np.float32(rad_per_ppm)
        chunk = max(1, _CHUNK_SUBVOXELS // self.n_sub)
        for start in range(0, len(voxels), chunk):
            rows = slice(start, start + chunk)
            ijk = np.stack(np.unravel_index(voxels[rows], self.shape), -1)
            coords = (ijk[:, None, :] + sub[None, :, :]).reshape(-1, 3).T
            smooth = ndi.map_coordinates(smooth_field, coords, order=1, mode="nearest").reshape(-1, self.n_sub)
            tissue = tissue_signal.flat[voxels[rows]][:, None]
            values = ((1 - occupied[rows]) * tissue + own_signal[rows]) * np.exp(1j * k * (smooth + field[rows]))
            signal.flat[voxels[rows]] = values.mean(axis=1)


def _segment_distance(
    grids: tuple, p0: npt.NDArray[np.float64], p1: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """Distance (mm) from broadcast grid points to the segment p0-p1."""
    d = p1 - p0
    length2 = max(float(d @ d), 1e-12)
    rel = [g - np.float32(p) for g, p in zip(grids, p0)]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / length2, 0.0, 1.0)
    return np.sqrt(sum((r - t * np.float32(c)) ** 2 for r, c in zip(rel, d))).astype(np.float32)


def _encode_phase(phase: npt.NDArray, units: str) -> npt.NDArray[np.float32] | npt.NDArray[np.int16]:
    """Wrapped phase as float32 radians in [-pi, pi) or int16 scanner units in -4096..4095."""
    if units == "arbitrary":
        scanner = np.round(phase * (4096 / np.pi)).astype(np.int32)
        return np.where(scanner >= 4096, scanner - 8192, scanner).astype(np.int16)
    # float32 pi rounds up past pi: keep one float32 step inside [-pi, pi) at both ends.
    limit = np.nextafter(np.float32(np.pi), np.float32(0))
    return np.clip(phase.astype(np.float32), -limit, limit)


def _truth_table(
    lesions: list[Lesion], lesion_ijk: list[npt.NDArray[np.float64]], affine: npt.NDArray[np.float64]
) -> pd.DataFrame:
    rows = []
    for lesion, ijk in zip(lesions, lesion_ijk):
        xyz = ijk_to_xyz(affine, ijk)[0]
        rows.append({
            "x": xyz[0], "y": xyz[1], "z": xyz[2], "i": ijk[0], "j": ijk[1], "k": ijk[2],
            "kind": lesion.kind, "diameter_mm": lesion.diameter_mm, "chi_ppm": lesion.chi_ppm,
            "region": lesion.region, "hemisphere": lesion.hemisphere,
            "mni_x": lesion.mni[0], "mni_y": lesion.mni[1], "mni_z": lesion.mni[2],
        })
    return pd.DataFrame(rows, columns=TRUTH_COLUMNS)


def _vein_record(vein: Vein, points: npt.NDArray[np.float64]) -> dict:
    steps = np.diff(points, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    cos_b0 = np.abs(steps[:, 2]) / np.maximum(lengths, 1e-9)
    return {
        "kind": vein.kind,
        "diameter_mm": vein.diameter_mm,
        "chi_ppm": vein.chi_ppm,
        "length_mm": round(float(lengths.sum()), 3),
        "mean_angle_to_b0_deg": round(float(np.degrees(np.arccos(cos_b0)).mean()), 2),
        "points_xyz": np.round(points, 2).tolist(),
    }


def _nucleus_record(nucleus: IronNucleus, xyz: npt.NDArray[np.float64]) -> dict:
    """Where an iron nucleus lies in the scanner (world mm) and in MNI, with its size and iron."""
    return {
        "name": nucleus.name,
        "side": nucleus.side,
        "xyz": np.round(xyz, 3).tolist(),
        "mni": list(nucleus.centre_mni),
        "semi_axes_mm": list(nucleus.semi_axes_mm),
        "chi_ppm": nucleus.chi_ppm,
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
