"""Named mimics a reader dismisses by where they are: physiological calcifications, the deep
veins and the flow voids of the large arteries.

Each is drawn per head with probability ``named_mimic_p`` (bilateral ones side by side, each side
present on its own), from a path or site in MNI mm with a few millimetres of jitter. Positions are
approximate MNI152 2009 anatomy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cmbflow.simulate.anatomy import LESION_GAP_MM, Lesion, Vein, lesion_region, vessel_is_clear
from cmbflow.simulate.params import SubjectParams

#: Physiological calcification sites (right side; bilateral ones mirror x) and diameter ranges.
CALCIFICATION_SITES = {
    "pineal": ((0.0, -31.0, 3.0), False, (2.0, 6.0)),
    "choroid_plexus": ((27.0, -40.0, 14.0), True, (2.0, 6.0)),
    "globus_pallidus": ((17.0, -3.0, -1.0), True, (1.5, 4.0)),
}
#: Vessel centre lines (right side, MNI mm, mirrored for the left), kind and diameter range.
VESSEL_PATHS = {
    "internal_cerebral_vein": (((3.0, 2.0, 14.0), (3.0, -10.0, 16.0), (2.5, -22.0, 15.0), (1.5, -32.0, 11.0),
                                (1.0, -40.0, 6.0)), "deep_vein", (1.5, 3.0)),
    "basal_vein": (((20.0, 4.0, -14.0), (22.0, -8.0, -12.0), (18.0, -20.0, -8.0), (12.0, -30.0, -2.0),
                    (5.0, -38.0, 3.0)), "deep_vein", (1.5, 3.0)),
    "middle_cerebral_artery": (((12.0, 2.0, -16.0), (22.0, 4.0, -13.0), (32.0, 3.0, -9.0), (40.0, 0.0, -4.0)),
                               "artery", (2.0, 3.5)),
    "basilar_artery": (((0.0, -14.0, -44.0), (0.0, -16.0, -36.0), (0.0, -18.0, -28.0), (0.0, -19.0, -22.0)),
                       "artery", (2.5, 4.0)),
}
#: Jitter (mm, each axis) of a site or of each point of a path.
JITTER_MM = 1.5


def draw_named_mimics(
    params: SubjectParams, lesions: list[Lesion], veins: list[Vein], rng: np.random.Generator
) -> tuple[list[Lesion], list[Vein]]:
    """The head's physiological calcifications and deep vessels, clear of its lesions and veins."""
    new_lesions: list[Lesion] = []
    for centre, bilateral, diameters in CALCIFICATION_SITES.values():
        for mirror in (1.0, -1.0) if bilateral else (1.0,):
            if rng.random() >= params.named_mimic_p:
                continue
            mni = np.asarray(centre) * (mirror, 1.0, 1.0) + rng.uniform(-JITTER_MM, JITTER_MM, 3)
            diameter = round(float(rng.uniform(*diameters)), 3)
            chi = round(float(rng.uniform(*params.calcification_chi_ppm)), 4)
            if all(params.head_scale * np.linalg.norm(mni - np.asarray(other.mni))
                   >= LESION_GAP_MM + (diameter + other.diameter_mm) / 2 for other in lesions + new_lesions):
                position = (float(mni[0]), float(mni[1]), float(mni[2]))
                new_lesions.append(Lesion("calcification", position, diameter, chi, str(lesion_region(mni)[0]),
                                          "L" if mni[0] < 0 else "R"))
    new_veins: list[Vein] = []
    for path, kind, diameters in VESSEL_PATHS.values():
        midline = max(abs(p[0]) for p in path) < 1.0
        for mirror in (1.0,) if midline else (1.0, -1.0):
            if rng.random() >= params.named_mimic_p:
                continue
            corners = np.asarray(path) * (mirror, 1.0, 1.0) + rng.uniform(-JITTER_MM, JITTER_MM, (len(path), 3))
            points = _polyline(corners)
            diameter = round(float(rng.uniform(*diameters)), 3)
            chi = 0.0 if kind == "artery" else round(float(rng.uniform(*params.vein_chi_ppm)), 4)
            if vessel_is_clear(points, diameter, lesions + new_lesions, veins + new_veins, params.head_scale):
                new_veins.append(Vein(kind, points, diameter, chi))
    return new_lesions, new_veins


def _polyline(corners: npt.NDArray[np.float64], step: float = 0.5) -> npt.NDArray[np.float64]:
    """Points every ``step`` mm along the straight pieces between the corners."""
    points = [corners[0]]
    for a, b in zip(corners[:-1], corners[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        points.extend(a + (b - a) * t for t in np.arange(1, n + 1) / n)
    return np.asarray(points)

