"""One function per image-processing workflow step: read the step's files, call the science, write
its outputs.

The light steps, which read tables and small files, live with what they write (cmbflow.detections,
cmbflow.cohort, cmbflow.mars, cmbflow.derivatives, cmbflow.report.pages), so that their jobs start
without loading torch or ANTs.

Each step runs in a process of its own, so each function imports the heavy libraries it needs
(ANTs, torch: 2-3 s each) itself, and a step pays only for its own.

Each function validates what it reads (errors name the subject and the file), and writes every
output atomically with a BIDS-Derivatives JSON sidecar, so a failed or killed job leaves nothing
half-written behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from cmbflow import longitudinal, phase
from cmbflow.config import CandidateParams, ClassifierConfig, PhaseConfig
from cmbflow.derivatives import (
    BRAIN_MASK,
    HPPHASE,
    MNI_SPACE,
    MNI_XFM,
    N4_MAGNITUDE,
    STAGE1_TABLE,
    SWI,
    sidecar,
)
from cmbflow.detections import (
    CLASSIFIER_FIELDS,
    locate_detections,
    mirror_vetoed,
    superseded,
    write_detections,
)
from cmbflow.errors import InputError
from cmbflow.image import (
    atomic_path,
    check_same_grid,
    load_image,
    read_sidecar,
    save_image,
    voxel_sizes,
    write_json,
)
from cmbflow.transforms import ALIGNMENT_SHIFT_MM, MIN_ALIGNMENT, Transforms, points_to_mni

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)


def _mask(path: str | Path, label: str) -> np.ndarray:
    return load_image(path, subject=label).get_fdata() > 0.5


def load_gre(path: str | Path, echo: str | int, label: str) -> nib.Nifti1Image:
    """A 3D GRE volume; from a 4D file only when its sidecar lists one EchoTime per volume."""
    img = load_image(path, subject=label, allow_4d=True)
    if img.ndim == 3:
        return img
    times = read_sidecar(path, subject=label).get("EchoTime")
    if not isinstance(times, list) or len(times) != img.shape[3]:
        raise InputError(
            f"4D image of shape {img.shape} where a 3D volume is expected",
            subject=label, path=path,
            fix="split echoes into BIDS files with echo- entities, or list one EchoTime per volume in the sidecar",
        )
    index = phase.select_echo(img.shape[3], times, echo, subject=label, path=path)
    log.info("%s: echo %d of %d (TE %.1f ms) from %s", label, index + 1, img.shape[3], times[index] * 1e3, path)
    return img.slicer[..., index]


def prepare_anatomy(
    mag: str | Path,
    t1w: str | Path | None,
    echo: str | int,
    out_n4: str | Path,
    out_n4_json: str | Path,
    out_mask: str | Path,
    out_mask_json: str | Path,
    out_xfm: str | Path,
    out_xfm_json: str | Path,
    out_warped: str | Path,
    out_warped_json: str | Path,
    label: str,
    problem: str | None = None,
) -> None:
    """N4 bias correction of the magnitude (also the first full check of the input file), brain
    mask on its grid and affine registration to MNI152, from one registration (one process: each
    step's own job spent about as long starting up as working).

    ``problem``: the subject's error found when the workflow started (see cmbflow.inputs), raised here.
    """
    from cmbflow import anat

    if problem:
        raise InputError(problem)
    img = anat.n4_bias_correct(load_gre(mag, echo, label))
    save_image(img.get_fdata(dtype=np.float32), img.affine, out_n4)
    write_json(sidecar([mag], Description="N4 bias-corrected magnitude", SkullStripped=False), out_n4_json)
    t1w_img = load_image(t1w, subject=label) if t1w else None
    with tempfile.TemporaryDirectory(prefix="cmbflow_reg_", dir=Path(out_xfm).parent.parent) as tmp:
        mask, registration = anat.brain_mask_and_registration(img, t1w_img, Path(tmp) / "reg_")
        volume = anat.brain_volume_ml(mask, img.affine)
        if volume < 300:  # an adult brain is 1000-1600 ml; far less means the mask failed
            raise InputError(f"brain mask holds only {volume:.0f} ml", subject=label, path=mag,
                             fix="check the image in a viewer (field of view, contrast, artefacts)")
        with atomic_path(out_xfm) as dst:
            shutil.copyfile(registration.transforms.affine, dst)
    save_image(mask, img.affine, out_mask, dtype=np.uint8)
    write_json(
        sidecar([t1w] if t1w else [], [out_n4], Type="Brain", Description="brain mask", BrainVolume_ml=round(volume, 1),
                Method="T1w-based" if t1w else "magnitude-based"),
        out_mask_json,
    )
    warped = registration.warped
    save_image(warped.get_fdata(dtype=np.float32), warped.affine, out_warped)
    write_json(sidecar([], [out_n4, out_mask, out_xfm], SkullStripped=True,
                       Description="bias-corrected magnitude, skull-stripped, in template space (QC)"),
               out_warped_json)
    write_json(
        sidecar([], [out_n4, out_mask], Description="ANTs affine transform (subject -> template)",
                FromSpace="T2starw", ToSpace=MNI_SPACE, Software="antspyx",
                RegistrationSimilarity=round(registration.similarity, 4),
                SimilarityMetric="entropy correlation coefficient in the template brain",
                RegistrationAlignment=round(registration.alignment, 3),
                AlignmentMetric=f"that similarity over its mean with the subject moved {ALIGNMENT_SHIFT_MM:g} mm along "
                                f"each axis; under {MIN_ALIGNMENT:g} the registration likely failed"),
        out_xfm_json,
    )


def preprocess_phase(
    mag: str | Path,
    phase_path: str | Path,
    mask: str | Path,
    echo: str | int,
    out_hpphase: str | Path,
    out_hpphase_json: str | Path,
    out_swi: str | Path,
    out_swi_json: str | Path,
    params: PhaseConfig,
    label: str,
) -> None:
    """Phase in radians, unwrapped and high-pass filtered; SWI from it and the magnitude."""
    mag_img = load_image(mag, subject=label)
    phase_img = load_gre(phase_path, echo, label)
    check_same_grid(mag_img, phase_img, subject=label, path=phase_path)
    brain = _mask(mask, label)
    vox = voxel_sizes(mag_img.affine)
    raw = phase_img.get_fdata(dtype=np.float32)
    units = phase.detect_phase_units(raw, read_sidecar(phase_path, subject=label), subject=label, path=phase_path)
    unwrapped = phase.unwrap(phase.phase_to_radians(raw, units), brain)
    hp = phase.highpass(unwrapped, brain, vox, params.highpass_sigma_mm)
    swi = phase.swi(mag_img.get_fdata(dtype=np.float32), hp, params.paramagnetic_sign, params.swi_power)
    save_image(hp, mag_img.affine, out_hpphase)
    save_image(swi, mag_img.affine, out_swi)
    write_json(sidecar([phase_path], [mask], Units="rad", InputUnits=units, SkullStripped=True,
                       HighPassSigma_mm=params.highpass_sigma_mm,
                       Description="unwrapped, high-pass filtered phase"), out_hpphase_json)
    write_json(sidecar([], [mag, out_hpphase], PhaseMaskPower=params.swi_power, SkullStripped=False,
                       ParamagneticPhase=params.paramagnetic_phase,
                       Description="susceptibility-weighted image (magnitude x phase mask^power)"), out_swi_json)


def _find_candidates(img: nib.Nifti1Image, mask: np.ndarray, hp: np.ndarray | None, params: CandidateParams,
                     paramagnetic_sign: int, torch_device: torch.device, label: str) -> pd.DataFrame:
    """Stage 1's table: every candidate with its features (probability and its sd n/a)."""
    from cmbflow.candidates import find_candidates

    table = find_candidates(img, mask, hp, params, device=torch_device, paramagnetic_sign=paramagnetic_sign)
    table.insert(6, "probability", np.nan)
    table.insert(7, "probability_sd", np.nan)
    log.info("%s: %d candidates on %s", label, len(table), torch_device)
    return table


def detect_candidates(
    image: str | Path,
    mask: str | Path,
    hpphase: str | Path | None,
    out_tsv: str | Path,
    out_json: str | Path,
    params: CandidateParams,
    paramagnetic_sign: int,
    device: str,
    label: str,
) -> None:
    """Stage 1 alone, written as a table (training data: :func:`run_stage1`)."""
    from cmbflow.frst import resolve_device

    img = load_image(image, subject=label)
    hp = load_image(hpphase, subject=label).get_fdata(dtype=np.float32) if hpphase else None
    torch_device = resolve_device(device)
    table = _find_candidates(img, _mask(mask, label), hp, params, paramagnetic_sign, torch_device, label)
    write_detections(
        table, out_tsv, out_json,
        description="Microbleed candidates (stage 1: radial symmetry + threshold/shape) with features",
        Device=torch_device.type,
        **sidecar([], [image, mask] + ([hpphase] if hpphase else [])),
    )


def detect_microbleeds(
    image: str | Path,
    mask: str | Path,
    hpphase: str | Path | None,
    xfm: str | Path,
    atlas: str | Path,
    out_candidates: str | Path,
    out_candidates_json: str | Path,
    out_calls: str | Path,
    out_calls_json: str | Path,
    candidate_params: CandidateParams,
    classifier_params: ClassifierConfig,
    paramagnetic_sign: int,
    device: str,
    label: str,
) -> None:
    """Both stages on images read once: the candidates (stage 1), then the CNN's microbleed
    probability for every one of them and ``is_cmb`` above threshold (of candidates within
    :data:`cmbflow.detections.SAME_LESION_MM`, only the most probable; none the model's mirror veto
    rules out, :func:`cmbflow.detections.mirror_vetoed`); then where each lies, as the
    final tables are written (:func:`cmbflow.detections.locate_detections`).

    The phase model is used when the subject has phase, the magnitude-only model otherwise.
    """
    from cmbflow.frst import resolve_device
    from cmbflow.model import load_classifier
    from cmbflow.patches import add_mirror_measures, candidate_features, candidate_patches

    img = load_image(image, subject=label)
    brain = _mask(mask, label)
    hp = load_image(hpphase, subject=label).get_fdata(dtype=np.float32) if hpphase else None
    classifier = load_classifier(classifier_params.model_dir, has_phase=hp is not None,
                                 threshold=classifier_params.threshold, mirror_veto=classifier_params.mirror_veto)
    torch_device = resolve_device(device)
    table = _find_candidates(img, brain, hp, candidate_params, paramagnetic_sign, torch_device, label)
    centres = table[["x", "y", "z"]].to_numpy(float)
    transforms = Transforms(Path(xfm))
    table[["mni_x", "mni_y", "mni_z"]] = points_to_mni(centres, transforms)
    data = img.get_fdata(dtype=np.float32)
    add_mirror_measures(table, data, brain, img.affine, transforms, candidate_params)
    patches = candidate_patches(data, brain, img.affine, centres, hp, paramagnetic_sign,
                                classifier.model.spec.context_mm)
    features = candidate_features(table, with_phase=hp is not None)
    table["probability"], table["probability_sd"] = classifier.predict_with_spread(patches, features, torch_device)
    table["superseded"] = superseded(centres, table["probability"])
    table["mirror_vetoed"] = mirror_vetoed(table["mirror_darkness"], classifier.mirror_veto)
    table["is_cmb"] = (table["probability"] >= classifier.threshold) & ~table["superseded"] & ~table["mirror_vetoed"]
    log.info("%s: %d of %d candidates called microbleeds (%s model, threshold %.3f, mirror veto %s, %s)",
             label, int(table["is_cmb"].sum()), len(table), classifier.variant, classifier.threshold,
             classifier.mirror_veto, torch_device)
    about = dict(zip(CLASSIFIER_FIELDS, (f"CandidateNet ({classifier.variant} model)", classifier.threshold,
                                         torch_device.type, classifier.weights_sha256)))
    sources = sidecar([], [image, mask] + ([hpphase] if hpphase else []) + [xfm])
    locate_detections(table, atlas, out_candidates, out_candidates_json, out_calls, out_calls_json,
                      **sources, **about)


def run_stage1(
    bids_dir: str | Path, label: str, out_dir: str | Path, echo: str | int, phase_params: PhaseConfig,
    candidate_params: CandidateParams, device: str,
) -> None:
    """Stage 1 of one simulated scan in one process: the workflow's anatomy, phase_preproc and
    candidates steps, with the same functions and file names (training data; the MNI transform
    and warped magnitude land in the anat folder).

    As separate jobs, each starting Python and importing torch and ANTs (3 s), a simulated scan
    spent about a third of its stage-1 time starting up; training runs 60 scans.

    A scan whose anatomy step fails as the workflow would fail it (a brain mask it cannot trust,
    say at the lowest SNR the training draws) is left out: ``<label>_desc-excluded.json`` records
    why, and it has no candidates table, so training and validation skip it.
    """
    raw = Path(bids_dir) / label / "anat" / label
    phase_path = Path(f"{raw}_part-phase_T2starw.nii.gz")
    has_phase = phase_path.exists()
    out = Path(out_dir) / label / "anat" / label
    out.parent.mkdir(parents=True, exist_ok=True)
    n4, mask, hpphase, swi, table = (f"{out}{end}" for end in (N4_MAGNITUDE, BRAIN_MASK, HPPHASE, SWI, STAGE1_TABLE))
    xfm, warped = f"{out}{MNI_XFM}".removesuffix(".mat"), f"{out}_space-{MNI_SPACE}{N4_MAGNITUDE}"
    try:
        prepare_anatomy(f"{raw}_part-mag_T2starw.nii.gz", None, echo, f"{n4}.nii.gz", f"{n4}.json", f"{mask}.nii.gz",
                        f"{mask}.json", f"{xfm}.mat", f"{xfm}.json", f"{warped}.nii.gz", f"{warped}.json", label)
    except InputError as error:
        log.warning("left out of training: %s", error)
        write_json({"excluded": str(error)}, f"{out}_desc-excluded.json")
        return
    if has_phase:
        preprocess_phase(f"{n4}.nii.gz", phase_path, f"{mask}.nii.gz", echo, f"{hpphase}.nii.gz", f"{hpphase}.json",
                         f"{swi}.nii.gz", f"{swi}.json", phase_params, label)
    detect_candidates(f"{n4}.nii.gz", f"{mask}.nii.gz", f"{hpphase}.nii.gz" if has_phase else None, f"{table}.tsv",
                      f"{table}.json", candidate_params, phase_params.paramagnetic_sign, device, label)


def track_sessions(
    sessions: list[str],
    mags: list[str | Path],
    masks: list[str | Path],
    candidates: list[str | Path],
    out_tsv: str | Path,
    out_json: str | Path,
    out_html: str | Path,
    baseline: str | None,
    label: str,
) -> None:
    """One subject's sessions (labels ``ses-XX``, with each session's bias-corrected magnitude,
    brain mask and final candidates table, in that order): every later session registered rigidly
    to the baseline, the calls tracked across sessions (:mod:`cmbflow.longitudinal`), and the
    subject's page over its sessions."""
    from cmbflow.anat import register_sessions
    from cmbflow.report.pages import write_longitudinal_report

    base = baseline or min(sessions)
    if base not in sessions:
        raise InputError(f"baseline session {base} is not among the sessions {', '.join(sessions)}", subject=label,
                         fix="set longitudinal.baseline_session to one of them")
    files = dict(zip(sessions, zip(mags, masks, candidates)))
    base_mag, base_mask, _ = files[base]
    base_img, base_brain = load_image(base_mag, subject=label), _mask(base_mask, label)
    loaded, similarity = [], {}
    with tempfile.TemporaryDirectory(prefix="cmbflow_sessions_", dir=Path(out_tsv).parent) as tmp:
        for session, (mag, mask, table) in files.items():
            if session == base:
                loaded.append(longitudinal.load_session(session, table, mask))
                continue
            registration = register_sessions(
                base_img, base_brain, load_image(mag, subject=label), _mask(mask, label), Path(tmp) / f"{session}_")
            similarity[session] = registration.similarity
            loaded.append(longitudinal.load_session(session, table, mask, registration.transforms))
        result = longitudinal.track_detections(loaded, base)
    longitudinal.write_longitudinal_detections(
        result, out_tsv, out_json, **sidecar([], [p for group in (mags, masks, candidates) for p in group]),
        RegistrationSimilarity={s: round(v, 4) for s, v in similarity.items()})
    write_longitudinal_report(result, dict(zip(sessions, mags)), dict(zip(sessions, masks)), similarity, out_html, label)
