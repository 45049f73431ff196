"""Follow-up sessions of a simulated head: same anatomy and lesions, moved, new noise, new bleeds.

A follow-up images the baseline's :class:`~cmbflow.simulate.subject.Anatomy` with the same
protocol, the head moved rigidly (a rotation of up to :data:`MAX_ROTATION_DEG` about a random axis
through the head centre and a shift of up to :data:`MAX_SHIFT_MM`), a new background field, bias
and noise, plus new microbleeds (the ARIA-H that anti-amyloid therapy monitoring looks for).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np
import numpy.typing as npt
from scipy.spatial.transform import Rotation

from cmbflow.simulate.anatomy import mni_canvas, place_lesions
from cmbflow.simulate.geometry import world_from_mni
from cmbflow.simulate.params import SubjectParams
from cmbflow.simulate.subject import SimulatedSubject, draw_anatomy, image_anatomy

MAX_ROTATION_DEG = 8.0
MAX_SHIFT_MM = 8.0
#: New microbleeds since baseline at the last session, drawn from one range per ARIA-H grade
#: (none, mild, moderate, severe): subject ``i`` gets grade ``(i - 1) % 4``, so any 4 consecutive
#: subjects (and so any cohort of 4 or more) show every grade.
NEW_BLEEDS_BY_GRADE = ((0, 0), (1, 4), (5, 9), (10, 12))
#: Truth columns added in a cohort with follow-ups: the lesion's id across sessions, and the
#: session (``ses-01``, ...) in which it first appears.
SESSION_TRUTH_COLUMNS = ["track", "session_introduced"]


def session_labels(n_sessions: int) -> list[str]:
    return [f"{number:02d}" for number in range(1, n_sessions + 1)]


def simulate_sessions(
    params: SubjectParams,
    rng: np.random.Generator,
    number: int,
    n_sessions: int,
    followup_rng: np.random.Generator,
) -> Iterator[SimulatedSubject]:
    """The sessions of subject ``number`` (from 1), one at a time (each is large).

    The baseline is exactly :func:`~cmbflow.simulate.subject.simulate_subject` with ``rng``; every
    follow-up draw comes from ``followup_rng``. Each session's ``lesions`` table has
    :data:`SESSION_TRUTH_COLUMNS` (track = position in the anatomy's lesion list, from 1), and its
    ``realised`` record ``motion_from_baseline``.
    """
    labels = session_labels(n_sessions)
    anatomy = draw_anatomy(params, rng)
    introduced = [f"ses-{labels[0]}"] * len(anatomy.lesions)
    yield _with_tracks(image_anatomy(params, anatomy, rng), introduced, params)
    lo, hi = NEW_BLEEDS_BY_GRADE[(number - 1) % len(NEW_BLEEDS_BY_GRADE)]
    total = int(followup_rng.integers(lo, hi + 1))
    # The new bleeds appear spread over the follow-ups, each with equal chance.
    per_session = followup_rng.multinomial(total, [1.0 / (n_sessions - 1)] * (n_sessions - 1))
    canvas = mni_canvas(params.template_resolution_mm)
    for label, count in zip(labels[1:], per_session):
        new = place_lesions(canvas, replace(params, n_cmb=int(count), n_calcifications=0), followup_rng,
                            existing=anatomy.lesions)
        anatomy = replace(anatomy, lesions=anatomy.lesions + new)
        introduced += [f"ses-{label}"] * len(new)
        moved = moved_head(params, followup_rng)
        yield _with_tracks(image_anatomy(moved, anatomy, followup_rng), introduced, params)


def moved_head(params: SubjectParams, rng: np.random.Generator) -> SubjectParams:
    """``params`` with the head turned about its centre (random axis, up to 8 degrees) and
    shifted (random direction, up to 8 mm), relative to the pose of ``params``."""
    axis, direction = _unit(rng), _unit(rng)
    turn = Rotation.from_rotvec(axis * np.deg2rad(rng.uniform(0.0, MAX_ROTATION_DEG)))
    # geometry.rotation_xyz turns about x, then y, then z: scipy's extrinsic "xyz".
    pose = turn * Rotation.from_euler("xyz", params.head_rotation_deg, degrees=True)
    shift = np.asarray(params.head_shift_mm) + direction * rng.uniform(0.0, MAX_SHIFT_MM)
    return replace(
        params,
        head_rotation_deg=tuple(float(a) for a in pose.as_euler("xyz", degrees=True)),  # type: ignore[arg-type]
        head_shift_mm=tuple(float(v) for v in shift),  # type: ignore[arg-type]
    )


def _unit(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def _with_tracks(subject: SimulatedSubject, introduced: list[str], baseline: SubjectParams) -> SimulatedSubject:
    lesions = subject.lesions.assign(track=np.arange(1, len(introduced) + 1), session_introduced=introduced)
    motion = world_from_mni(subject.params) @ np.linalg.inv(world_from_mni(baseline))
    angle = np.degrees(Rotation.from_matrix(motion[:3, :3]).magnitude())
    realised = {
        **subject.realised,
        "motion_from_baseline": {
            "world_from_baseline_world": np.round(motion, 6).tolist(),
            "rotation_deg": round(float(angle), 4),
            "head_centre_shift_mm": round(float(np.linalg.norm(
                np.subtract(subject.params.head_shift_mm, baseline.head_shift_mm))), 4),
        },
    }
    return replace(subject, lesions=lesions, realised=realised)
