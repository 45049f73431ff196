"""The calls as raters open them: label map with look-up table, and a 3D Slicer point list."""

import json

import nibabel as nib
import numpy as np
import pandas as pd

from cmbflow.image import ijk_to_xyz
from cmbflow.viewer import MARKUPS_SCHEMA, call_label_map, write_viewer_files

AFFINE = np.array([[-1.0, 0, 0, 30], [0, 1.0, 0, -20], [0, 0, 2.0, -10], [0, 0, 0, 1]])  # LAS, 1x1x2 mm
SHAPE = (40, 40, 20)


def calls_table(xyz, radius, region="lobar"):
    xyz = np.asarray(xyz, dtype=float)
    return pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "probability": 0.8,
                         "radius_mm": radius, "region": region})


def test_each_call_is_a_sphere_of_its_radius_in_world_mm():
    calls = calls_table([[10, 0, 4], [0, 5, 4]], [2.5, 0.3])
    labels = call_label_map(calls, SHAPE, AFFINE)
    ijk = np.argwhere(labels == 1)
    distance = np.linalg.norm(ijk_to_xyz(AFFINE, ijk) - [10, 0, 4], axis=1)
    assert distance.max() <= 2.5 and len(ijk) == 2 * 9 + 21  # 1 mm in-plane, 2 mm slices: 9 + 21 + 9 voxels
    # Smaller than a voxel: the voxel that holds the position.
    assert np.argwhere(labels == 2).tolist() == [[30, 25, 7]]


def test_overlapping_spheres_give_each_voxel_to_the_nearer_call():
    labels = call_label_map(calls_table([[10, 0, 4], [14, 0, 4]], [3.0, 3.0]), SHAPE, AFFINE)
    ijk = np.argwhere(labels > 0)
    x = ijk_to_xyz(AFFINE, ijk)[:, 0]
    assert (labels[tuple(ijk.T)] == np.where(x < 12, 1, 2))[x != 12].all()


def test_viewer_files(tmp_path):
    calls = calls_table([[10, 0, 4], [0, 5, 4]], [2.5, 1.0], ["lobar", None])
    tsv = tmp_path / "sub-01" / "anat" / "sub-01_desc-cmb_detections.tsv"
    tsv.parent.mkdir(parents=True)
    calls.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    grid = tmp_path / "mag.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), grid)
    out = {name: tmp_path / name for name in ("dseg.nii.gz", "dseg.tsv", "dseg.json", "markups.mrk.json")}
    write_viewer_files(tsv, grid, *out.values())

    dseg = nib.load(out["dseg.nii.gz"])
    assert np.allclose(dseg.affine, AFFINE) and dseg.shape == SHAPE and dseg.get_data_dtype() == np.int16
    assert set(np.unique(np.asanyarray(dseg.dataobj))) == {0, 1, 2}
    lookup = pd.read_csv(out["dseg.tsv"], sep="\t", keep_default_na=False)
    assert lookup.to_numpy().tolist() == [[1, "cmb-1", 0.8, "lobar"], [2, "cmb-2", 0.8, "n/a"]]
    assert json.loads(out["dseg.json"].read_text())["Sources"] == ["bids::sub-01/anat/sub-01_desc-cmb_detections.tsv"]

    markups = json.loads(out["markups.mrk.json"].read_text())
    assert markups["@schema"] == MARKUPS_SCHEMA
    (points,) = markups["markups"]
    assert points["type"] == "Fiducial" and points["coordinateSystem"] == "RAS"
    assert [p["label"] for p in points["controlPoints"]] == ["cmb-1", "cmb-2"]
    assert points["controlPoints"][1]["position"] == [0.0, 5.0, 4.0]
    assert points["controlPoints"][0]["description"] == "probability 0.800, radius 2.5 mm, region lobar"


def test_no_calls_give_an_empty_map_and_point_list(tmp_path):
    tsv = tmp_path / "calls.tsv"
    calls_table(np.zeros((0, 3)), []).to_csv(tsv, sep="\t", index=False)
    grid = tmp_path / "mag.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), grid)
    out = [tmp_path / n for n in ("d.nii.gz", "d.tsv", "d.json", "m.mrk.json")]
    write_viewer_files(tsv, grid, *out)
    assert not np.asanyarray(nib.load(out[0]).dataobj).any()
    assert json.loads(out[3].read_text())["markups"][0]["controlPoints"] == []
