"""The cohort page's plots (matplotlib, Agg): counts per scan, per protocol and by region."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; jobs have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from cmbflow.report.figures import save_png  # noqa: E402

DPI = 80


def cohort_figure(summary: pd.DataFrame, detections: pd.DataFrame) -> Figure:
    """Microbleeds per subject (histogram), per acquisition protocol, and by region (when known)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=DPI)
    counts = summary["n_cmb"].dropna().astype(int)
    if len(counts):
        axes[0].hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="#4477aa", edgecolor="white")
    axes[0].set(title="microbleeds per scan", xlabel="number of microbleeds", ylabel="scans")
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    groups = acquisition_groups(summary)
    for position, (name, values) in enumerate(summary.groupby(groups, sort=True)["n_cmb"]):
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        axes[1].scatter(position + jitter, values, color="#4477aa", alpha=0.8)
    names = sorted(groups.unique())
    axes[1].set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    axes[1].set(title="microbleeds per scan by acquisition", ylabel="microbleeds", xlim=(-0.5, len(names) - 0.5))
    if "region" in detections.columns and len(detections):
        by_region = detections["region"].fillna("n/a").value_counts().sort_index()
        axes[2].bar(by_region.index.astype(str), by_region.to_numpy(), color="#4477aa")
        axes[2].tick_params(axis="x", rotation=30, labelsize=8)
    else:
        axes[2].text(0.5, 0.5, "regions: n/a", ha="center", va="center", transform=axes[2].transAxes)
        axes[2].set_xticks([])
        axes[2].set_yticks([])
    axes[2].set(title="microbleeds by region", ylabel="microbleeds")
    fig.tight_layout()
    return fig


def acquisition_groups(summary: pd.DataFrame) -> pd.Series:
    """A protocol label per scan: field strength, voxel size and whether phase was used."""

    def label(row: pd.Series) -> str:
        field = f"{row['field_strength_t']:g} T" if pd.notna(row.get("field_strength_t")) else "? T"
        voxel = "x".join(f"{row[f'voxel_size_{a}_mm']:.2g}" for a in "xyz")
        return f"{field}, {voxel} mm, {'phase' if row['phase_used'] else 'no phase'}"

    return summary.apply(label, axis=1) if len(summary) else pd.Series(dtype=str)


def save_cohort_figure(summary: pd.DataFrame, detections: pd.DataFrame, path: str | Path) -> None:
    """Write :func:`cohort_figure` as a palette PNG, atomically."""
    fig = cohort_figure(summary, detections)
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=DPI)
    plt.close(fig)
    save_png(Image.open(rendered), path)
