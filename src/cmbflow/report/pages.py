"""The per-subject and cohort HTML reports: self-contained pages (PNG figures as data URIs).

The figures are also written as PNG files beside the page, for ``snakemake --report``.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jinja2
import nibabel as nib
import numpy as np
import pandas as pd

from cmbflow import __version__
from cmbflow.cohort import summarise_subject
from cmbflow.detections import read_detections
from cmbflow.image import atomic_path, load_image, read_sidecar
from cmbflow.longitudinal import ARIA_H_NOTE, Longitudinal, longitudinal_summary
from cmbflow.patches import TRAINED_ECHO_TIME_MS, TRAINED_FIELD_T, TRAINED_IN_PLANE_MM, TRAINED_SLICE_MM
from cmbflow.ratings import ratings_table_path
from cmbflow.report import figures
from cmbflow.transforms import ALIGNMENT_SHIFT_MM, MIN_ALIGNMENT
from cmbflow.viewer import write_viewer_files

#: Warning thresholds. An adult brain is 1000-1600 ml; the simulated and real scans gave 50-2000
#: candidates (registration: cmbflow.transforms.MIN_ALIGNMENT; benchmarks/RESULTS.md).
LOW_BRAIN_VOLUME_ML = 900.0
MANY_CANDIDATES = 3000
MANY_CALLS = 20
#: Rows of the call montage and calls drawn on the page (a page with hundreds of zooms helps nobody:
#: the others are rated from their table row), and rejected candidates shown.
MAX_MONTAGE_CALLS = 40
N_REJECTED = 8

#: Columns of the detection tables; the MNI and region columns appear once the workflow writes them.
DETECTION_COLUMNS = ["x", "y", "z", "probability", "radius_mm", "mni_x", "mni_y", "mni_z", "region", "lobe",
                     "hemisphere"]
#: QC metrics shown as "n/a" when a subject's metrics lack them (counts by location, status).
EXPECTED_METRICS = ["n_cmb", "n_candidates", "n_lobar", "n_deep", "n_infratentorial", "strictly_lobar",
                    "boston2_cmb_criterion", "brain_volume_ml", "registration_similarity", "registration_alignment"]
#: Values of a ``status`` field that mean the subject went through.
OK_STATUS = {"ok", "success", "done", "complete"}

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def qc_warnings(metrics: dict) -> list[str]:
    """Reasons to look at a subject before trusting its counts (metrics it lacks are skipped)."""
    warnings = []
    status = metrics.get("status")
    if not _ok(status):
        error = metrics.get("error")
        warnings.append(f"status {status}: {error if _known(error) else 'see the logs'}")
    if metrics.get("phase_used") in (False, 0):  # None (unknown) is not in there
        warnings.append("no phase image: the magnitude-only model ran (calcifications and veins are harder to "
                        "tell from microbleeds)")
    sizes = [metrics.get(f"voxel_size_{axis}_mm") for axis in "xyz"]
    if all(_known(size) for size in sizes):
        *in_plane, thickness = sorted(round(float(size), 2) for size in sizes)
        if max(in_plane) > TRAINED_IN_PLANE_MM[1] or thickness > TRAINED_SLICE_MM[1]:
            warnings.append(f"voxels ({' x '.join(f'{size:g}' for size in sizes)} mm) coarser than the classifier "
                            f"was trained on (in-plane up to {TRAINED_IN_PLANE_MM[1]:g} mm, slices up to "
                            f"{TRAINED_SLICE_MM[1]:g} mm): expect more false calls, above all without phase")
    echo_time, field = metrics.get("echo_time_ms"), metrics.get("field_strength_t")
    if _known(echo_time) and not TRAINED_ECHO_TIME_MS[0] <= float(echo_time) <= TRAINED_ECHO_TIME_MS[1]:
        warnings.append(f"echo time {float(echo_time):g} ms outside what the classifier was trained on "
                        f"({TRAINED_ECHO_TIME_MS[0]:g}-{TRAINED_ECHO_TIME_MS[1]:g} ms): bleeds bloom and their phase "
                        "differs; on simulated scans at 40-50 ms it called few of them (docs/performance.md)")
    if _known(field) and not TRAINED_FIELD_T[0] <= float(field) <= TRAINED_FIELD_T[1]:
        warnings.append(f"field strength {float(field):g} T outside what the classifier was trained on "
                        f"({TRAINED_FIELD_T[0]:g}-{TRAINED_FIELD_T[1]:g} T): check the calls")
    volume = metrics.get("brain_volume_ml")
    if _known(volume) and volume < LOW_BRAIN_VOLUME_ML:
        warnings.append(f"low brain volume ({volume:.0f} ml < {LOW_BRAIN_VOLUME_ML:.0f} ml): check the brain mask "
                        "(partial field of view, mask failure)")
    n_candidates = metrics.get("n_candidates")
    if _known(n_candidates) and n_candidates > MANY_CANDIDATES:
        warnings.append(f"many candidates ({n_candidates:.0f} > {MANY_CANDIDATES}): artefacts or noise likely")
    n_cmb = metrics.get("n_cmb")
    if _known(n_cmb) and n_cmb >= MANY_CALLS:
        warnings.append(f"many microbleeds called ({n_cmb:.0f}): review the montage for veins and artefacts")
    alignment = metrics.get("registration_alignment")
    if _known(alignment) and alignment < MIN_ALIGNMENT:
        warnings.append(f"poor registration to MNI (alignment {alignment:.2f} < {MIN_ALIGNMENT:g}: barely better than "
                        f"{ALIGNMENT_SHIFT_MM:g} mm off): MNI positions, regions and mirror partners are unreliable")
    return warnings


def why_not_called(candidates: pd.DataFrame, threshold: float | None) -> list[str]:
    """Why each candidate that is not a call is not: ``superseded`` (a more probable one nearby
    stands for the lesion), ``mirror veto`` (cmbflow.detections.mirror_vetoed) or ``below threshold``."""
    reasons = []
    for _, row in candidates.iterrows():
        if bool(row.get("superseded", False)):
            reasons.append("superseded")
        elif bool(row.get("mirror_vetoed", False)) and (threshold is None or row["probability"] >= threshold):
            reasons.append("mirror veto")
        else:
            reasons.append("below threshold")
    return reasons


def _ok(status: object) -> bool:
    """Whether a subject's status (unknown counts as ok: older outputs have none) means it went through."""
    return not _known(status) or str(status).lower() in OK_STATUS


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _display(value: object) -> str:
    """A table cell: "n/a" for missing values, floats rounded."""
    if not _known(value) or value == "":
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _rows(table: pd.DataFrame, columns: list[str]) -> list[list[str]]:
    return [[_display(row.get(c)) for c in columns] for _, row in table.iterrows()]


def _data_uri(png: str | Path | bytes) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _flag(value: object) -> str:
    """A mimic flag for the reviewer: yes, no, or n/a (no phase to tell)."""
    return "n/a" if not _known(value) else "yes" if str(value).lower() in ("true", "1", "1.0") else "no"


def review_calls(calls: pd.DataFrame, candidates: pd.DataFrame, channels: list[figures.Channel],
                 projected: figures.Channel) -> list[dict]:
    """What the page shows to rate each call, most probable first: its number (row of the calls
    table, as in the viewer files), position, probability and its spread, mimic flags (from the
    candidates table) and, for the first :data:`MAX_MONTAGE_CALLS`, its figure as a data URI."""
    flags = candidates[["x", "y", "z", "mimic_diamagnetic", "mimic_vessel"]] if "mimic_vessel" in candidates else None
    table = calls.assign(number=np.arange(1, len(calls) + 1))
    if flags is not None:  # the calls are candidates: same positions, written alike
        table = table.merge(flags, on=["x", "y", "z"], how="left")
    table = table.sort_values("probability", ascending=False, kind="stable")
    return [{
        "number": int(row["number"]),
        "xyz": [float(row[c]) for c in "xyz"],
        "probability": _display(row.get("probability")),
        "probability_sd": _display(row.get("probability_sd")),
        "radius_mm": _display(row.get("radius_mm")),
        "region": " / ".join(str(row[c]) for c in ("region", "lobe", "hemisphere") if _known(row.get(c))) or "n/a",
        "mimic_diamagnetic": _flag(row.get("mimic_diamagnetic")),
        "mimic_vessel": _flag(row.get("mimic_vessel")),
        "figure": (_data_uri(figures.png_bytes(figures.call_figure(row, channels, projected)))
                   if shown < MAX_MONTAGE_CALLS else None),
    } for shown, (_, row) in enumerate(table.iterrows())]


def _write_html(template: str, path: str | Path, **context: object) -> None:
    html = _TEMPLATES.get_template(template).render(version=__version__, **context)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")


def write_subject_report(
    magnitude: str | Path,
    mask: str | Path,
    mask_json: str | Path,
    xfm_json: str | Path,
    warped: str | Path,
    candidates: str | Path,
    candidates_json: str | Path,
    calls: str | Path,
    hpphase: str | Path | None,
    swi: str | Path | None,
    sources: dict[str, str | None],
    has_phase: bool,
    echo: int | None,
    out_metrics: str | Path,
    out_html: str | Path,
    out_mask_png: str | Path,
    out_registration_png: str | Path,
    out_calls_png: str | Path,
    out_rejected_png: str | Path,
    out_dseg: str | Path,
    out_dseg_tsv: str | Path,
    out_dseg_json: str | Path,
    out_markups: str | Path,
    label: str,
) -> None:
    """One subject's QC: its row of the cohort summary (:func:`cmbflow.cohort.summarise_subject`, in
    ``out_metrics``); the files raters open (:func:`cmbflow.viewer.write_viewer_files`); and its
    page: inputs, mask and registration overlays, every call with buttons to rate it (the page
    exports the subject's ratings table, docs/ratings.md), top rejected candidates."""
    summarise_subject(magnitude, mask_json, xfm_json, candidates, calls, sources["magnitude"], has_phase, echo,
                      out_metrics, label)
    write_viewer_files(calls, magnitude, out_dseg, out_dseg_tsv, out_dseg_json, out_markups)
    mag_img = load_image(magnitude, subject=label)
    mask_img = load_image(mask, subject=label)
    inside = np.asarray(mask_img.dataobj) > 0.5
    figures.save_png(figures.mask_figure(mag_img, mask_img), out_mask_png)
    figures.save_png(figures.registration_figure(nib.load(warped)), out_registration_png)

    channels = [figures.Channel.windowed("magnitude", mag_img, inside)]
    projected = channels[0]  # the calls' minimum-intensity projections: of the SWI where there is one
    if hpphase and swi:
        projected = figures.Channel.windowed("SWI", load_image(swi, subject=label), inside)
        channels.append(projected)
        channels.append(figures.Channel.windowed("high-pass phase", load_image(hpphase, subject=label), inside,
                                                 symmetric=True))
    table = read_detections(candidates).sort_values("probability", ascending=False, kind="stable")
    review = review_calls(read_detections(calls), table, channels, projected)
    calls = table[table["is_cmb"].astype(bool)]
    model = json.loads(Path(candidates_json).read_text())
    rejected = table[~table["is_cmb"].astype(bool)].head(N_REJECTED)
    rejected = rejected.assign(not_called=why_not_called(rejected, model.get("ProbabilityThreshold")))
    figures.save_png(figures.montage_figure(calls.head(MAX_MONTAGE_CALLS), channels, "no microbleeds called"),
                     out_calls_png)
    figures.save_png(figures.montage_figure(rejected, channels, "no rejected candidates"), out_rejected_png)

    qc = json.loads(Path(out_metrics).read_text())
    source = read_sidecar(sources["magnitude"]) if sources.get("magnitude") else {}
    acquisition = {
        **{f"{name} file": path or "none" for name, path in sources.items()},
        "matrix": qc.get("matrix"),
        "voxel size (mm)": " x ".join(_display(qc.get(f"voxel_size_{a}_mm")) for a in "xyz"),
        "echo time (ms)": qc.get("echo_time_ms"),
        "field strength (T)": qc.get("field_strength_t"),
        "scanner": " ".join(str(source[k]) for k in ("Manufacturer", "ManufacturersModelName") if k in source),
        "phase used": qc.get("phase_used"),
        "classifier": model.get("Classifier"),
        "probability threshold": model.get("ProbabilityThreshold"),
        "brain mask method": json.loads(Path(mask_json).read_text()).get("Method"),
        "cmbflow version": qc.get("cmbflow_version"),
    }
    shown = EXPECTED_METRICS + [k for k in qc if k not in EXPECTED_METRICS and k not in ("source",)]
    _write_html(
        "subject.html", out_html,
        label=label,
        warnings=qc_warnings(qc),
        n_calls=len(calls),
        n_candidates=len(table),
        acquisition={k: _display(v) for k, v in acquisition.items()},
        metrics={k: _display(qc.get(k)) for k in shown},
        columns=DETECTION_COLUMNS,
        calls=_rows(calls, DETECTION_COLUMNS),
        review=review,
        ratings_file=ratings_table_path(label).name,
        ratings_path=ratings_table_path(label).as_posix(),
        max_montage=MAX_MONTAGE_CALLS,
        sizes={"zoom": f"{figures.ZOOM_MM:g}", "context": f"{figures.CONTEXT_MM:g}", "minip": f"{figures.MINIP_MM:g}"},
        rejected=_rows(rejected, DETECTION_COLUMNS + ["not_called"]),
        figures={"mask": _data_uri(out_mask_png), "registration": _data_uri(out_registration_png),
                 "rejected": _data_uri(out_rejected_png)},
    )


def write_cohort_report(
    summary: str | Path,
    detections: str | Path,
    out_html: str | Path,
    out_png: str | Path,
    subject_reports: dict[str, str],
) -> None:
    """The cohort page: summary table, count plots, counts per protocol and by region, flagged subjects.

    ``subject_reports`` maps a subject/session label to its page, linked relative to ``out_html``.
    """
    from cmbflow.report import plots  # matplotlib: the subject pages do without it

    table = pd.read_csv(summary)
    calls = pd.read_csv(detections)
    if "rating" in calls.columns:  # bleeds the raters found and the model missed are no calls
        calls = calls[calls["rating"] != "missed"]
    plots.save_cohort_figure(table, calls, out_png)
    labels = [row.participant_id + (f"_{row.session_id}" if _known(row.session_id) else "")
              for row in table.itertuples()]
    statuses = table["status"] if "status" in table.columns else pd.Series("ok", index=table.index)
    # A failed subject has no page to link to.
    links = {lab: Path(os.path.relpath(subject_reports[lab], Path(out_html).parent)).as_posix()
             for lab, status in zip(labels, statuses) if lab in subject_reports and _ok(status)}
    flagged = [{"label": lab, "warnings": qc_warnings(row.to_dict())}
               for lab, (_, row) in zip(labels, table.iterrows())]
    protocols = table.assign(protocol=plots.acquisition_groups(table)).groupby("protocol")["n_cmb"]
    by_protocol = [[name, str(len(v)), *(_display(float(stat)) for stat in (v.mean(), v.median(), v.max()))]
                   for name, v in protocols]
    region_columns = [c for c in ("region", "lobe", "hemisphere") if c in calls.columns]
    by_region = ([[*map(_display, key if isinstance(key, tuple) else (key,)), str(n)]
                  for key, n in calls.fillna({c: "n/a" for c in region_columns}).groupby(region_columns).size().items()]
                 if region_columns else [])
    _write_html(
        "cohort.html", out_html,
        n_scans=len(table),
        n_calls=len(calls),
        columns=list(table.columns),
        rows=[[_display(v) for v in row] for row in table.itertuples(index=False)],
        labels=labels,
        links=links,
        flagged=[f for f in flagged if f["warnings"]],
        protocol_rows=by_protocol,
        region_columns=region_columns,
        region_rows=by_region,
        figure=_data_uri(out_png),
    )


def write_longitudinal_report(
    tracked: Longitudinal,
    mags: dict[str, str | Path],
    masks: dict[str, str | Path],
    similarity: dict[str, float],
    out_html: str | Path,
    label: str,
) -> None:
    """A subject's page over its sessions: per follow-up, the counts and ARIA-H grade (research
    use), every row of the longitudinal table, and each new call beside the same place at baseline.

    ``mags``/``masks``: each session's bias-corrected magnitude and brain mask, by session label.
    """
    channels = {}
    for session, mag in mags.items():
        img = load_image(mag, subject=label)
        channels[session] = figures.Channel.windowed(session, img, np.asarray(load_image(masks[session], subject=label).dataobj) > 0.5)
    summary = longitudinal_summary(tracked, label, similarity).iloc[1:]
    table = tracked.detections
    columns = ["track", "status", "reason", "x", "y", "z", "probability", "radius_mm", "region", "lobe"]
    followups = []
    for _, row in summary.iterrows():
        rows = table[table["session"] == row["session"]]
        new = rows[rows["status"] == "new"].head(MAX_MONTAGE_CALLS)
        followups.append({
            "session": row["session"], "counts": {k: _display(row[k]) for k in row.index if k.startswith("n_")},
            "grade": row["aria_h_grade"], "similarity": _display(row["registration_similarity"]),
            "rows": _rows(rows, columns),
            "new": [{"track": int(call["track"]), "figure": _data_uri(figures.png_bytes(figures.sessions_figure(
                channels[tracked.baseline], channels[row["session"]],
                call[["x_baseline", "y_baseline", "z_baseline"]].to_numpy(float), call[["x", "y", "z"]].to_numpy(float))))}
                for _, call in new.iterrows()],
        })
    _write_html("longitudinal.html", out_html, label=label, baseline=tracked.baseline, followups=followups,
                columns=columns, note=ARIA_H_NOTE, max_figures=MAX_MONTAGE_CALLS)
