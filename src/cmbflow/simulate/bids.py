"""Write simulated subjects as a BIDS dataset, with the truth in a derivatives dataset inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmbflow import __version__
from cmbflow.errors import InputError
from cmbflow.image import atomic_path, save_image, write_json
from cmbflow.simulate.params import PRESETS, sample_subject_params
from cmbflow.simulate.sessions import session_labels, simulate_sessions
from cmbflow.simulate.subject import SimulatedSubject, simulate_subject

BIDS_VERSION = "1.10.0"
MANUFACTURER = "cmbflow-simulator"
TRUTH_DIR = Path("derivatives") / "simulation"
_GENERATED_BY = [{"Name": "cmbflow simulator", "Version": __version__}]

_README = """\
Simulated single-echo GRE (T2*-weighted) magnitude and phase images with known cerebral
microbleeds, written by the cmbflow simulator ({preset} preset, seed {seed}).

Anatomy comes from the MNI152 2009 tissue maps; susceptibility fields are dipole convolutions; the
signal near lesions and veins is averaged over sub-voxels, so microbleeds bloom with TE and B0.
Ground truth (lesion positions in world RAS+ mm, sizes, susceptibilities, regions; brain masks;
all simulation parameters) is in derivatives/simulation/.
"""


def simulate_cohort(
    out_dir: str | Path,
    n_subjects: int,
    seed: int,
    preset: str = "standard",
    sessions: bool | int = False,
) -> list[str]:
    """Simulate ``n_subjects`` and write them as BIDS under ``out_dir``; return the subject labels.

    ``sessions``: False writes no session level, True (or 1) one session ``ses-01``, N >= 2 a
    baseline and N - 1 follow-ups of the same head (:mod:`cmbflow.simulate.sessions`), whose truth
    tables add :data:`~cmbflow.simulate.sessions.SESSION_TRUTH_COLUMNS`.

    Subject number ``i`` (label ``sub-00i``, from 1) draws everything from
    ``np.random.default_rng([seed, i])`` (its follow-ups from ``default_rng([seed, i, 1])``), so a
    subject does not depend on how many others are made, the baseline does not depend on the
    number of sessions, and the same seed writes byte-identical files.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown simulator preset {preset!r}", fix=f"use one of {', '.join(PRESETS)}")
    if n_subjects < 1 or seed < 0 or sessions < 0:
        raise InputError(f"need n_subjects >= 1, seed >= 0 and sessions >= 0 (got {n_subjects}, {seed}, {sessions})")
    out_dir = Path(out_dir)
    labels = [f"sub-{number:03d}" for number in range(1, n_subjects + 1)]
    write_json(
        {"Name": f"cmbflow simulated cohort ({preset}, seed {seed})", "BIDSVersion": BIDS_VERSION,
         "DatasetType": "raw", "GeneratedBy": _GENERATED_BY},
        out_dir / "dataset_description.json",
    )
    _write_text(out_dir / "README", _README.format(preset=preset, seed=seed))
    _write_text(out_dir / "participants.tsv", "participant_id\n" + "".join(f"{label}\n" for label in labels))
    write_json(
        {"Name": "cmbflow simulation ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
         "GeneratedBy": _GENERATED_BY},
        out_dir / TRUTH_DIR / "dataset_description.json",
    )
    for number, label in enumerate(labels, start=1):
        rng = np.random.default_rng([seed, number])
        params = sample_subject_params(rng, preset)
        if sessions < 2:
            write_subject(out_dir, label, simulate_subject(params, rng), session="01" if sessions else None)
            continue
        followup_rng = np.random.default_rng([seed, number, 1])
        for session, subject in zip(session_labels(int(sessions)),
                                    simulate_sessions(params, rng, number, int(sessions), followup_rng)):
            write_subject(out_dir, label, subject, session=session)
    return labels


def write_subject(out_dir: Path, label: str, subject: SimulatedSubject, session: str | None = None) -> None:
    """Write one subject's images, sidecars and truth files."""
    params = subject.params
    parts = [label] + ([f"ses-{session}"] if session else [])
    rel = Path(*parts) / "anat"
    prefix = "_".join(parts)
    anat, truth = out_dir / rel, out_dir / TRUTH_DIR / rel
    sidecar = {"EchoTime": params.te_s, "MagneticFieldStrength": params.b0_tesla, "Manufacturer": MANUFACTURER}

    save_image(subject.magnitude, subject.affine, anat / f"{prefix}_part-mag_T2starw.nii.gz")
    write_json(sidecar, anat / f"{prefix}_part-mag_T2starw.json")
    if subject.phase is not None:
        dtype = np.int16 if params.phase_units == "arbitrary" else np.float32
        save_image(subject.phase, subject.affine, anat / f"{prefix}_part-phase_T2starw.nii.gz", dtype=dtype)
        write_json({**sidecar, "Units": params.phase_units}, anat / f"{prefix}_part-phase_T2starw.json")

    save_image(subject.brain_mask, subject.affine, truth / f"{prefix}_desc-brain_mask.nii.gz", dtype=np.uint8)
    with atomic_path(truth / f"{prefix}_desc-truth_lesions.tsv") as tmp:
        subject.lesions.to_csv(tmp, sep="\t", index=False, float_format="%.4f", lineterminator="\n")
    write_json(subject.realised, truth / f"{prefix}_desc-truth_params.json")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
