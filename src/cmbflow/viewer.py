"""The calls in the files raters open in a viewer: a label map on the input grid with its look-up
table (BIDS dseg), and a 3D Slicer markups point set.

Call ``n`` is row ``n`` (1-based) of the subject's ``*_desc-cmb_detections.tsv``: its label value
in the map, its name (``cmb-n``) in the look-up table and in the markups. An edited label map is
read back with this numbering (cmbflow.ratings).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd

from cmbflow.derivatives import sidecar
from cmbflow.detections import CORE_COLUMNS, FLOAT_FORMAT, LOCATION_COLUMNS, read_detections
from cmbflow.image import atomic_path, save_image, voxel_sizes, write_json, xyz_to_ijk

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/"
                  "Schema/markups-schema-v1.0.3.json#")


def call_name(number: int) -> str:
    """The name of call ``number`` (1-based row of the calls table) in every viewer file."""
    return f"cmb-{number}"


def call_label_map(calls: pd.DataFrame, shape: tuple[int, ...],
                   affine: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """Label ``n`` on the voxels whose centres lie within call ``n``'s ``radius_mm`` of its position.

    The voxel that holds a call's position is always its own, so the smallest call shows. Where
    two spheres overlap, a voxel goes to the nearer call.
    """
    labels = np.zeros(shape[:3], dtype=np.int16)
    if calls.empty:
        return labels
    reach = np.ceil(calls["radius_mm"].to_numpy(float)[:, None] / voxel_sizes(affine)).astype(int) + 1
    centres = xyz_to_ijk(affine, calls[["x", "y", "z"]].to_numpy(float))
    flat, distance, label = [], [], []
    for number, (centre, radius, half) in enumerate(zip(centres, calls["radius_mm"], reach), start=1):
        home = np.rint(centre).astype(int)
        lo, hi = np.maximum(home - half, 0), np.minimum(home + half, np.array(shape[:3]) - 1)
        box = np.stack(np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
        mm = np.linalg.norm((box - centre) @ np.asarray(affine, dtype=float)[:3, :3].T, axis=1)
        inside = (mm <= radius) | np.all(box == home, axis=1)
        flat.append(np.ravel_multi_index(box[inside].T, shape[:3]))
        distance.append(mm[inside])
        label.append(np.full(int(inside.sum()), number))
    flat, distance, label = (np.concatenate(a) for a in (flat, distance, label))
    order = np.lexsort((distance, flat))  # by voxel, nearest call first
    first = np.unique(flat[order], return_index=True)[1]
    labels.flat[flat[order][first]] = label[order][first]
    return labels


def markups(calls: pd.DataFrame) -> dict:
    """A 3D Slicer markups point list (schema v1.0.3): one control point per call, in RAS mm."""
    points = [
        {
            "id": str(number),
            "label": call_name(number),
            "description": f"probability {call.probability:.3f}, radius {call.radius_mm:.1f} mm, "
                           f"region {call.region if pd.notna(call.region) else 'n/a'}",
            "position": [round(float(call[c]), 4) for c in ("x", "y", "z")],
            "positionStatus": "defined",
            "locked": True,
        }
        for number, (_, call) in enumerate(calls.iterrows(), start=1)
    ]
    return {"@schema": MARKUPS_SCHEMA, "markups": [
        {"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "mm", "controlPoints": points}]}


def write_viewer_files(
    calls: str | Path,
    grid: str | Path,
    out_dseg: str | Path,
    out_dseg_tsv: str | Path,
    out_dseg_json: str | Path,
    out_markups: str | Path,
) -> None:
    """The calls table as a label map on ``grid``'s voxels (with look-up table and sidecar) and as
    a markups point list."""
    table = read_detections(calls)
    img = nib.load(grid)  # the header only: shape and affine
    save_image(call_label_map(table, img.shape, img.affine), img.affine, out_dseg, dtype=np.int16)
    lookup = pd.DataFrame({
        "index": np.arange(1, len(table) + 1),
        "name": [call_name(n) for n in range(1, len(table) + 1)],
        "probability": table["probability"],
        "region": table["region"],
    })
    with atomic_path(out_dseg_tsv) as tmp:
        lookup.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, na_rep="n/a")
    write_json(sidecar([], [calls], Description="Cerebral microbleed calls: label n is row n of the calls "
                       "table, a sphere of its apparent radius (radius_mm)",
                       probability=CORE_COLUMNS["probability"], region=LOCATION_COLUMNS["region"]), out_dseg_json)
    write_json(markups(table), out_markups)
