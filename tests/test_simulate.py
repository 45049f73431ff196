"""The cohort simulator: determinism, truth geometry, phase physics, blooming, units, BIDS output."""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from cmbflow.errors import InputError
from cmbflow.image import ijk_to_xyz, voxel_sizes, xyz_to_ijk
from cmbflow.simulate import PRESETS, SubjectParams, sample_subject_params, simulate_cohort, simulate_subject
from cmbflow.simulate.anatomy import LESION_GAP_MM, lesion_region
from cmbflow.simulate.geometry import draw_warp
from cmbflow.simulate.params import TRAINING_IN_PLANE_MM
from cmbflow.simulate.physics import GAMMA_BAR_MHZ_PER_T, dipole_field, phase_per_ppm, sphere_field
from cmbflow.simulate.subject import TRUTH_COLUMNS, _artefacts

SEED = [7, 2]


def lesion_params(**changes) -> SubjectParams:
    """Tiny subject on a non-RAS grid with big lesions and no veins."""
    base = sample_subject_params(np.random.default_rng([7, 1]), "tiny")
    settings = dict(
        orientation="PSR", voxel_size_mm=(1.5, 2.5, 1.5), te_s=0.02, snr=40.0, phase_units="arbitrary",
        n_cmb=3, n_calcifications=2, n_veins=0, cmb_diameter_mm=(4.0, 5.0), cmb_chi_ppm=(0.5, 0.7),
        calcification_diameter_mm=(3.5, 4.0), calcification_chi_ppm=(-0.6, -0.5),
    )
    return dataclasses.replace(base, **{**settings, **changes})


@pytest.fixture(scope="module")
def subject():
    return simulate_subject(lesion_params(), np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def subject_long_te():
    return simulate_subject(lesion_params(te_s=0.04), np.random.default_rng(SEED))


def neighbourhood(volume, affine, xyz, radius_mm):
    """Values of ``volume`` and their distances (mm) from ``xyz`` for voxels within ``radius_mm``."""
    centre = xyz_to_ijk(affine, xyz)[0]
    half = np.ceil(radius_mm / voxel_sizes(affine)).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.floor(centre).astype(int) + half + 1, volume.shape)
    ijk = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(ijk_to_xyz(affine, ijk) - np.asarray(xyz), axis=1)
    keep = dist <= radius_mm
    return volume[tuple(ijk[keep].T)], dist[keep], ijk[keep]


def local_tissue(magnitude, affine, xyz):
    values, dist, _ = neighbourhood(magnitude, affine, xyz, 16.0)
    return float(np.median(values[dist >= 11.0]))


def dark_voxels(magnitude, affine, xyz, fraction=0.5):
    """Voxels within 9 mm of ``xyz`` darker than ``fraction`` of the surrounding tissue."""
    values, dist, _ = neighbourhood(magnitude, affine, xyz, 9.0)
    return int((values < fraction * local_tissue(magnitude, affine, xyz)).sum())


def complex_image(sub):
    phase = sub.phase.astype(np.float64)
    if sub.params.phase_units == "arbitrary":
        phase *= np.pi / 4096
    return sub.magnitude * np.exp(1j * phase)


def test_sampling_is_deterministic_and_within_preset_ranges():
    for preset in PRESETS:
        first = [sample_subject_params(np.random.default_rng([3, i]), preset) for i in range(1, 40)]
        again = [sample_subject_params(np.random.default_rng([3, i]), preset) for i in range(1, 40)]
        assert first == again
    standard = [sample_subject_params(np.random.default_rng([3, i]), "standard") for i in range(1, 60)]
    for p in standard:
        in_plane, thick = sorted(p.voxel_size_mm)[0], max(p.voxel_size_mm)
        assert 0.8 <= in_plane <= 1.0 and 1.6 <= thick <= 2.0
        assert 0.018 <= p.te_s <= 0.030 and 15 <= p.snr <= 35 and p.phase_units == "rad" and p.has_phase
    assert {p.b0_tesla for p in standard} == {1.5, 3.0}
    diverse = [sample_subject_params(np.random.default_rng([3, i]), "diverse") for i in range(1, 80)]
    assert {p.phase_units for p in diverse} == {"rad", "arbitrary"}
    assert {p.paramagnetic_sign for p in diverse} == {-1}  # a site convention, set in the config
    assert 0.05 < np.mean([not p.has_phase for p in diverse]) < 0.4
    assert len({p.orientation for p in diverse}) > 10
    assert all(0.015 <= p.te_s <= 0.040 and 10 <= p.snr <= 40 for p in diverse)
    # The classifier's test of generalisation lies beyond the training protocols and heads.
    shifted = [sample_subject_params(np.random.default_rng([3, i]), "shifted") for i in range(1, 40)]
    for p in shifted:
        in_plane, thick = sorted(p.voxel_size_mm)[0], max(p.voxel_size_mm)
        assert (in_plane < TRAINING_IN_PLANE_MM[0] or in_plane > TRAINING_IN_PLANE_MM[1]) and 3.5 <= thick <= 4.0
        assert 0.040 <= p.te_s <= 0.050 and p.warp_mm >= 5.0 and p.atrophy_mm >= 1.5 and p.deep_gm_chi_ppm >= 0.25
    assert 0.1 < np.mean([not p.has_phase for p in shifted]) < 0.45
    training = [sample_subject_params(np.random.default_rng([3, i]), "training") for i in range(1, 40)]
    # Leave one family out: a shifted-<family> head is the shifted head of its seed in that family
    # and the training head of its seed in the others.
    family_fields = {"protocol": {"voxel_size_mm", "te_s"}, "anatomy": {"warp_mm", "atrophy_mm"},
                     "vessels": {"vein_chi_ppm", "medullary_vein_diameter_mm", "deep_gm_chi_ppm", "named_mimic_p"}}
    for i, (all_families, head) in enumerate(zip(shifted[:10], training), start=1):
        for family, fields in family_fields.items():
            one = dataclasses.asdict(sample_subject_params(np.random.default_rng([3, i]), f"shifted-{family}"))
            for name, value in one.items():
                if name in fields or name in {"snr", "has_phase", "n_cmb"}:
                    assert value == getattr(all_families, name)
                else:
                    assert value == getattr(head, name)
    assert all(p.n_cmb >= 5 and p.n_calcifications >= 1 for p in training)
    assert np.mean([p.n_cmb for p in training]) > 2 * np.mean([p.n_cmb for p in diverse])
    assert all(0.4 <= min(p.voxel_size_mm) and max(p.voxel_size_mm) <= 3.5 and np.prod(p.voxel_size_mm) >= 0.45
               and 0.010 <= p.te_s <= 0.040 and 6 <= p.snr <= 40 and 0 <= p.warp_mm <= 5 for p in training)
    assert min(min(p.voxel_size_mm) for p in training) < 0.5 and max(max(p.voxel_size_mm) for p in training) > 3.0
    for variation in ("atrophy_mm", "ringing", "ghosting"):  # some heads, not all
        assert 0.1 < np.mean([getattr(p, variation) > 0 for p in training]) < 0.9, variation
    assert all(p.warp_mm == p.atrophy_mm == p.named_mimic_p == 0 and not p.tissue_factors for p in diverse)
    with pytest.raises(InputError, match="orientation"):
        dataclasses.replace(standard[0], orientation="RRS")
    with pytest.raises(InputError, match="preset"):
        sample_subject_params(np.random.default_rng(0), "huge")


def test_phase_per_ppm_follows_the_sign_convention():
    expected = 2 * np.pi * GAMMA_BAR_MHZ_PER_T * 3.0 * 0.02  # 1 ppm at 3 T is 127.7 Hz
    assert phase_per_ppm(3.0, 0.02, -1) == pytest.approx(-expected)
    assert phase_per_ppm(3.0, 0.02, +1) == pytest.approx(expected) and expected == pytest.approx(16.05, abs=0.01)


def test_dipole_field_matches_the_analytic_sphere_on_an_anisotropic_grid():
    """Guards the axis-0/1 voxel-size swap that works around qsm-forward's kernel."""
    vs = np.array([0.4, 0.8, 0.6])
    shape = (80, 40, 56)
    axes = [(np.arange(n) - n / 2) * v for n, v in zip(shape, vs)]
    sub = np.linspace(-0.375, 0.375, 4)
    occupancy = np.zeros(shape)
    for dx in sub:  # supersampled, so the discrete sphere has the right moment
        for dy in sub:
            for dz in sub:
                x, y, z = (a + d * v for a, d, v in zip(axes, (dx, dy, dz), vs))
                occupancy += (x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2) < 3.0**2
    occupancy /= 64
    offsets = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    r = np.sqrt(sum(o**2 for o in offsets))
    shell = (r > 4.5) & (r < 10.0)
    # Oblique B0 is held to a looser bound: the discrete k-space kernel itself errs more there.
    for b0, bound in (([0, 0, 1], 0.02), ([1, 0, 0], 0.02), ([0, 1, 0], 0.02), ([0.6, 0, 0.8], 0.08)):
        error = dipole_field(occupancy, vs, b0) - sphere_field(offsets, 3.0, 1.0, b0)
        rms = np.sqrt(np.mean(error[shell] ** 2) / np.mean(sphere_field(offsets, 3.0, 1.0, b0)[shell] ** 2))
        assert rms < bound, (b0, rms)


def test_truth_is_in_world_coordinates_of_a_non_ras_grid(subject):
    assert nib.aff2axcodes(subject.affine) == ("P", "S", "R")
    assert np.allclose(voxel_sizes(subject.affine), (1.5, 2.5, 1.5))
    truth = subject.lesions
    assert list(truth.columns) == TRUTH_COLUMNS
    assert (truth.kind == "cmb").sum() == 3 and (truth.kind == "calcification").sum() == 2
    xyz, ijk = truth[["x", "y", "z"]].to_numpy(), truth[["i", "j", "k"]].to_numpy()
    assert np.allclose(ijk_to_xyz(subject.affine, ijk), xyz, atol=1e-6)
    assert set(truth.region) <= {"lobar", "deep", "infratentorial"}
    assert list(truth.hemisphere) == ["L" if x < 0 else "R" for x in truth.mni_x]
    assert list(truth.region) == list(lesion_region(truth[["mni_x", "mni_y", "mni_z"]].to_numpy()))
    assert all(subject.brain_mask[tuple(np.round(p).astype(int))] for p in ijk)
    diameters = truth.diameter_mm.to_numpy()
    gaps = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) - (diameters[:, None] + diameters[None]) / 2
    assert gaps[~np.eye(len(truth), dtype=bool)].min() >= LESION_GAP_MM - 1e-6


def test_each_lesion_is_a_dark_spot_centred_on_its_truth_position(subject):
    mag = subject.magnitude
    for row in subject.lesions.itertuples():
        xyz = np.array([row.x, row.y, row.z])
        tissue = local_tissue(mag, subject.affine, xyz)
        values, dist, ijk = neighbourhood(mag, subject.affine, xyz, 8.0)
        assert values[dist < 2.0].min() < 0.5 * tissue, row
        darkness = np.clip(0.5 * tissue - values, 0, None)  # darkness-weighted centre of the spot
        centre = (ijk_to_xyz(subject.affine, ijk) * darkness[:, None]).sum(0) / darkness.sum()
        assert np.linalg.norm(centre - xyz) < 1.5, row


def test_iron_nuclei_are_bilateral_dark_paramagnetic_spots_where_the_truth_says(subject):
    """Every nucleus both sides, recorded in world mm; the red nuclei darken the magnitude."""
    nuclei = subject.realised["iron_nuclei"]
    names = {n["name"] for n in nuclei}
    assert {"red_nucleus", "substantia_nigra", "dentate", "globus_pallidus", "putamen", "caudate",
            "pulvinar"} <= names
    assert all(sorted(n["side"] for n in nuclei if n["name"] == name) == ["L", "R"] for name in names)
    head = np.asarray(subject.realised["world_from_mni"])
    for n in nuclei:
        assert np.allclose(head[:3, :3] @ n["mni"] + head[:3, 3], n["xyz"], atol=1e-2)
        assert np.sign(n["mni"][0]) == (1 if n["side"] == "R" else -1) and n["chi_ppm"] > 0
    for n in (n for n in nuclei if n["name"] == "red_nucleus"):
        core, _, _ = neighbourhood(subject.magnitude, subject.affine, n["xyz"], 1.5)
        assert np.median(core) < 0.85 * local_tissue(subject.magnitude, subject.affine, n["xyz"]), n


@pytest.fixture(scope="module")
def subject_without_lesion_fields():
    """The same subject and noise, but lesions with no susceptibility (their R2* is kept)."""
    params = lesion_params(cmb_chi_ppm=(0.0, 0.0), calcification_chi_ppm=(0.0, 0.0))
    return simulate_subject(params, np.random.default_rng(SEED))


def test_cmb_and_calcification_have_opposite_phase_dipoles_along_b0(subject, subject_without_lesion_fields):
    """Paramagnetic CMB: field up at the poles (along world z) and down at the equator; the
    default sign (-1) makes that negative phase at the poles. Calcifications do the opposite.
    The twin without lesion fields removes the background (skull, iron, air) around each lesion."""
    assert subject.params.paramagnetic_sign == -1
    ratio = complex_image(subject) * np.conj(complex_image(subject_without_lesion_fields))

    def at(xyz):
        ijk = xyz_to_ijk(subject.affine, xyz).T
        return ndi.map_coordinates(ratio.real, ijk, order=1) + 1j * ndi.map_coordinates(ratio.imag, ijk, order=1)

    for row in subject.lesions.itertuples():
        centre = np.array([row.x, row.y, row.z])
        r = 1.25 * row.diameter_mm  # 2.5 radii: outside the dark core, phase still large, no wrap
        poles = at(centre + np.array([[0, 0, r], [0, 0, -r]])).prod()
        expected = -1 if row.kind == "cmb" else 1
        for across in ([r, 0, 0], [0, r, 0]):
            difference = np.angle(poles * np.conj(at(centre + np.array([across, np.negative(across)])).prod()))
            assert np.sign(difference) == expected and abs(difference) > 0.3, (row, difference)


def test_blooming_grows_with_echo_time(subject, subject_long_te):
    cmbs = subject.lesions[subject.lesions.kind == "cmb"]
    centres = cmbs[["x", "y", "z"]].to_numpy()
    short = sum(dark_voxels(subject.magnitude, subject.affine, c) for c in centres)
    long = sum(dark_voxels(subject_long_te.magnitude, subject.affine, c) for c in centres)
    pd.testing.assert_frame_equal(subject.lesions, subject_long_te.lesions)
    assert long > 1.3 * short > 0


def test_arbitrary_phase_units_are_int16_scanner_values(subject):
    assert subject.phase.dtype == np.int16
    assert subject.phase.min() >= -4096 and subject.phase.max() <= 4095
    assert subject.phase.min() < -4000 and subject.phase.max() > 4000  # the background wraps


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same one-subject cohort written without and with sessions."""
    out = {}
    for sessions in (False, True):
        out[sessions] = tmp_path_factory.mktemp(f"sessions-{sessions}")
        assert simulate_cohort(out[sessions], 1, seed=5, preset="tiny", sessions=sessions) == ["sub-001"]
    return out


@pytest.mark.parametrize("sessions", [False, True])
def test_cohort_writes_bids_names_and_truth(cohorts, sessions):
    root = cohorts[sessions]
    sub = "sub-001/ses-01" if sessions else "sub-001"
    prefix = "sub-001_ses-01" if sessions else "sub-001"
    truth_dir = root / "derivatives" / "simulation" / sub / "anat"
    expected = {
        "dataset_description.json", "participants.tsv", "README",
        f"{sub}/anat/{prefix}_part-mag_T2starw.nii.gz", f"{sub}/anat/{prefix}_part-mag_T2starw.json",
        f"{sub}/anat/{prefix}_part-phase_T2starw.nii.gz", f"{sub}/anat/{prefix}_part-phase_T2starw.json",
        "derivatives/simulation/dataset_description.json",
        f"derivatives/simulation/{sub}/anat/{prefix}_desc-truth_lesions.tsv",
        f"derivatives/simulation/{sub}/anat/{prefix}_desc-brain_mask.nii.gz",
        f"derivatives/simulation/{sub}/anat/{prefix}_desc-truth_params.json",
    }
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == expected

    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "cmbflow simulator" and description["Name"]
    truth_description = json.loads((root / "derivatives/simulation/dataset_description.json").read_text())
    assert truth_description["DatasetType"] == "derivative"
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-001\n"

    anat = root / sub / "anat"
    mag_sidecar = json.loads((anat / f"{prefix}_part-mag_T2starw.json").read_text())
    phase_sidecar = json.loads((anat / f"{prefix}_part-phase_T2starw.json").read_text())
    params = json.loads((truth_dir / f"{prefix}_desc-truth_params.json").read_text())
    assert mag_sidecar == {"EchoTime": params["params"]["te_s"], "MagneticFieldStrength": 3.0,
                           "Manufacturer": "cmbflow-simulator"}
    assert phase_sidecar == {**mag_sidecar, "Units": "rad"}
    assert 0.015 <= mag_sidecar["EchoTime"] <= 0.04

    mag = nib.load(anat / f"{prefix}_part-mag_T2starw.nii.gz")
    phase = nib.load(anat / f"{prefix}_part-phase_T2starw.nii.gz")
    mask = nib.load(truth_dir / f"{prefix}_desc-brain_mask.nii.gz")
    assert mag.get_data_dtype() == np.float32 and phase.get_data_dtype() == np.float32
    assert np.array_equal(mag.affine, phase.affine) and np.array_equal(mag.affine, mask.affine)
    assert np.allclose(mag.affine, params["affine"], atol=1e-5)
    values = np.asarray(phase.dataobj)
    assert values.min() >= -np.pi and values.max() < np.pi
    assert 900 < np.asarray(mask.dataobj).sum() * np.prod(voxel_sizes(mask.affine)) / 1000 < 2000

    truth = pd.read_csv(truth_dir / f"{prefix}_desc-truth_lesions.tsv", sep="\t")
    assert list(truth.columns) == TRUTH_COLUMNS and len(truth) >= 2
    xyz = ijk_to_xyz(mag.affine, truth[["i", "j", "k"]].to_numpy())
    assert np.allclose(xyz, truth[["x", "y", "z"]].to_numpy(), atol=1e-3)


def test_same_seed_writes_byte_identical_files(cohorts):
    """Two runs with the same seed (one with sessions) write identical images and truth."""
    plain, with_sessions = cohorts[False], cohorts[True]
    for path in plain.rglob("sub-001_*"):
        twin = with_sessions / str(path.relative_to(plain)).replace("sub-001/", "sub-001/ses-01/").replace(
            "sub-001_", "sub-001_ses-01_")
        assert path.read_bytes() == twin.read_bytes(), path


def test_warp_is_bounded_and_head_positions_invert_it():
    warp = draw_warp(np.random.default_rng(5), 5.0)
    p = np.random.default_rng(6).uniform(-90, 90, (500, 3))
    moved = np.linalg.norm(warp.displacement(p), axis=1)
    assert 0.5 < moved.max() <= 5.0
    q = warp.head_position(p)
    assert np.abs(q + warp.displacement(q) - p).max() < 1e-3


@pytest.fixture(scope="module")
def varied_subject():
    """The lesion subject with the training-only variations but atrophy (which moves where lesions
    fit): a warped head with its own tissue properties, ringing, motion ghosts and all named mimics."""
    changes = dict(warp_mm=5.0, tissue_factors=(("gm", 1.1, 1.2, 0.01), ("wm", 0.9, 0.8, -0.01)),
                   ringing=0.1, ghosting=0.05, named_mimic_p=1.0)
    return simulate_subject(lesion_params(**changes), np.random.default_rng(SEED))


def test_varied_head_keeps_lesions_at_their_truth_and_adds_the_named_mimics(subject, varied_subject):
    """The same lesions as the plain head (in template space), dark where the warped head puts them."""
    assert varied_subject.realised["warp"] is not None
    placed = varied_subject.lesions.iloc[:len(subject.lesions)]
    assert np.allclose(placed[["mni_x", "mni_y", "mni_z"]], subject.lesions[["mni_x", "mni_y", "mni_z"]])
    assert not np.allclose(placed[["x", "y", "z"]], subject.lesions[["x", "y", "z"]], atol=0.2)
    test_each_lesion_is_a_dark_spot_centred_on_its_truth_position(dataclasses.replace(varied_subject, lesions=placed))
    calcifications = varied_subject.lesions[varied_subject.lesions.kind == "calcification"]
    assert len(calcifications) >= (subject.lesions.kind == "calcification").sum() + 3
    at_pineal = np.hypot(calcifications.mni_x, calcifications.mni_y + 31.0) < 4
    assert at_pineal.sum() == 1 and calcifications[at_pineal].region.iloc[0] == "deep"
    vessels = [v for v in varied_subject.realised["veins"] if v["kind"] in ("deep_vein", "artery")]
    assert {v["kind"] for v in vessels} == {"deep_vein", "artery"}
    for artery in (v for v in vessels if v["kind"] == "artery"):  # flow voids: dark, with no field
        middle = artery["points_xyz"][len(artery["points_xyz"]) // 2]
        core, _, _ = neighbourhood(varied_subject.magnitude, varied_subject.affine, middle, 1.0)
        assert core.min() < 0.8 * local_tissue(varied_subject.magnitude, varied_subject.affine, middle), artery


def test_atrophy_widens_the_csf_spaces(subject):
    atrophic = simulate_subject(lesion_params(atrophy_mm=1.5), np.random.default_rng(SEED))
    assert np.array_equal(atrophic.brain_mask, subject.brain_mask)
    brain = subject.brain_mask > 0
    bright = np.percentile(subject.magnitude[brain], 90)  # CSF is the brightest part of the brain here
    assert (atrophic.magnitude[brain] > bright).mean() > 1.5 * (subject.magnitude[brain] > bright).mean()


def test_ringing_oscillates_at_edges_and_ghosts_repeat_along_phase_encoding():
    params = lesion_params(voxel_size_mm=(1.0, 1.0, 3.0))  # axis 2 is the slice axis
    image = np.zeros((64, 64, 16), np.complex64)
    image[24:39, 24:39, 4:12] = 1.0  # an odd width: its spectrum has no zeros on whole lines
    ringing = np.abs(_artefacts(image, np.eye(4), dataclasses.replace(params, ringing=0.2), np.random.default_rng(0)))
    profile = ringing[:, 32, 8]
    assert profile[39:43].max() > 0.02 and (np.diff(np.sign(np.diff(profile[39:52]))) != 0).sum() >= 2
    assert np.abs(ringing[32, 32, :4]).max() < 1e-5  # nothing along the slice axis
    ghosted = np.abs(_artefacts(image, np.eye(4), dataclasses.replace(params, ghosting=0.1), np.random.default_rng(0)))
    outside = np.ones(image.shape, bool)
    outside[20:44, 20:44, :] = False  # the object plus the largest shift
    assert ghosted[outside].max() > 0.02
    assert np.abs(ghosted[26:38, 26:38, 6:10] - 1).max() < 0.5
