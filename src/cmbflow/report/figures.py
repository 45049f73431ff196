"""QC figures (matplotlib, Agg): mask and registration overlays, zooms around detections, cohort plots.

Every cut is resampled on a plane of world (RAS+) axes from the image affine, so figures look
the same whatever the voxel order or orientation of the file: axial cuts show world x to the
right (subject's right on the right, neurological convention) and y up; coronal x and z;
sagittal y and z.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; jobs have no display

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from cmbflow.image import atomic_path, ijk_to_xyz  # noqa: E402
from cmbflow.patches import sample_world  # noqa: E402

#: Normal (world axis index) of each view, and the two world axes shown (horizontal, vertical).
VIEWS: dict[str, tuple[int, tuple[int, int]]] = {
    "sagittal": (0, (1, 2)),
    "coronal": (1, (0, 2)),
    "axial": (2, (0, 1)),
}
_AXIS_NAMES = "xyz"
#: Side of the zoomed views around one detection, and their sampling step.
ZOOM_MM = 24.0
ZOOM_SPACING_MM = 0.25
#: Side of the context view beside each call's zoom (the vessel or sulcus a dark spot sits in), its
#: sampling step, and the slab of its minimum-intensity projection: minIP slabs of about 8 mm are
#: what shows a vein's course across slices on SWI.
CONTEXT_MM = 48.0
CONTEXT_SPACING_MM = 0.5
MINIP_MM = 8.0
MINIP_STEP_MM = 0.5
#: Width of one panel of a call's figure (inches, at DPI): about 150 px.
CALL_PANEL_IN = 1.9
#: Cuts of the registration figure, in MNI mm: through the basal ganglia, centrum semiovale, brainstem.
MNI_CUTS = (("axial", -20.0), ("axial", 5.0), ("axial", 35.0), ("coronal", -18.0), ("sagittal", 12.0))
DPI = 80


@dataclass(frozen=True)
class Channel:
    """One image shown in a montage column, with its display window."""

    name: str
    data: npt.NDArray[np.floating]
    affine: npt.NDArray[np.float64]
    cmap: str
    vmin: float
    vmax: float

    @classmethod
    def windowed(
        cls, name: str, img: nib.Nifti1Image, mask: npt.NDArray[np.bool_], cmap: str = "gray", symmetric: bool = False
    ) -> "Channel":
        """A channel windowed on the brain's 1st-99.5th percentiles (±99th of |value| if ``symmetric``)."""
        data = np.asarray(img.dataobj, dtype=np.float32)
        values = data[mask] if mask.any() else data.ravel()
        if symmetric:
            half = float(np.percentile(np.abs(values), 99)) or 1.0
            return cls(name, data, img.affine, cmap, -half, half)
        low, high = np.percentile(values, [1, 99.5])
        return cls(name, data, img.affine, cmap, float(low), float(high) if high > low else float(low) + 1)


def world_bounds(shape: tuple[int, ...], affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(3, 2) world min/max (mm) over the centres of an image's corner voxels."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1).T
    xyz = ijk_to_xyz(affine, corners)
    return np.stack([xyz.min(axis=0), xyz.max(axis=0)], axis=1)


def world_plane(
    volume: npt.NDArray[np.floating],
    affine: npt.NDArray[np.float64],
    view: str,
    position_mm: float,
    bounds: npt.ArrayLike,
    spacing_mm: float,
    order: int = 1,
) -> npt.NDArray[np.float32]:
    """A cut of ``volume`` on a world-axis plane (rows: vertical axis, for ``imshow(origin="lower")``).

    ``bounds`` is the (2, 2) world range (mm) of the horizontal and vertical axes; points outside
    the image are NaN (drawn as background).
    """
    normal, (u, v) = VIEWS[view]
    bounds = np.asarray(bounds, dtype=float)
    us = np.arange(bounds[0, 0], bounds[0, 1] + spacing_mm / 2, spacing_mm)
    vs = np.arange(bounds[1, 0], bounds[1, 1] + spacing_mm / 2, spacing_mm)
    grid_v, grid_u = np.meshgrid(vs, us, indexing="ij")
    points = np.zeros((grid_u.size, 3))
    points[:, normal] = position_mm
    points[:, u] = grid_u.ravel()
    points[:, v] = grid_v.ravel()
    values = sample_world(volume, affine, points, order=order, mode="constant", cval=np.nan)
    return values.reshape(grid_u.shape)


def world_minip(
    volume: npt.NDArray[np.floating],
    affine: npt.NDArray[np.float64],
    view: str,
    position_mm: float,
    bounds: npt.ArrayLike,
    spacing_mm: float,
    slab_mm: float = MINIP_MM,
) -> npt.NDArray[np.float32]:
    """Minimum-intensity projection of a ``slab_mm`` slab centred on a world-axis cut (as
    :func:`world_plane`; NaN only where the whole slab is outside the image)."""
    offsets = np.arange(-slab_mm / 2, slab_mm / 2 + MINIP_STEP_MM / 2, MINIP_STEP_MM)
    planes = [world_plane(volume, affine, view, position_mm + offset, bounds, spacing_mm) for offset in offsets]
    return np.fmin.reduce(planes)


def _show(ax: Axes, plane: npt.NDArray, bounds: npt.NDArray, cmap: str, vmin: float, vmax: float) -> None:
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="black")
    extent = (bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1])
    ax.imshow(plane, origin="lower", extent=extent, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _cut_title(view: str, position_mm: float) -> str:
    return f"{view} {_AXIS_NAMES[VIEWS[view][0]]} = {round(position_mm)} mm"


def _overview_spacing(bounds: npt.NDArray, pixels: int = 220) -> float:
    """Sampling step that draws the largest side of the field of view in about ``pixels`` samples."""
    return max(0.5, float(np.ptp(bounds, axis=1).max()) / pixels)


def mask_figure(magnitude: nib.Nifti1Image, mask: nib.Nifti1Image) -> Figure:
    """The brain mask (red outline) on the bias-corrected magnitude: 3 axial cuts, 1 coronal, 1 sagittal."""
    inside = np.asarray(mask.dataobj) > 0.5
    channel = Channel.windowed("magnitude", magnitude, inside)
    # Every 8th voxel is plenty to place the cuts, and keeps a 0.5 mm scan's mask within memory.
    sparse = inside[::2, ::2, ::2]
    voxels = np.argwhere(sparse) * 2 if sparse.any() else np.array(mask.shape[:3]) // 2
    low, centre, high = np.percentile(ijk_to_xyz(mask.affine, voxels), [25, 50, 75], axis=0)
    cuts = [("axial", low[2]), ("axial", centre[2]), ("axial", high[2]),
            ("coronal", centre[1]), ("sagittal", centre[0])]
    bounds = world_bounds(magnitude.shape, magnitude.affine)
    spacing = _overview_spacing(bounds)
    fig, axes = plt.subplots(1, len(cuts), figsize=(3.0 * len(cuts), 3.2), dpi=DPI)
    for ax, (view, position) in zip(axes, cuts):
        in_plane = bounds[list(VIEWS[view][1])]
        _show(ax, world_plane(channel.data, channel.affine, view, position, in_plane, spacing),
              in_plane, "gray", channel.vmin, channel.vmax)
        outline = np.nan_to_num(world_plane(inside, mask.affine, view, position, in_plane, spacing, order=0))
        if outline.any():
            ax.contour(outline, levels=[0.5], colors="red", linewidths=1.0, origin="lower",
                       extent=(in_plane[0, 0], in_plane[0, 1], in_plane[1, 0], in_plane[1, 1]))
        ax.set_title(_cut_title(view, position), fontsize=9)
    fig.tight_layout()
    return fig


@lru_cache(maxsize=1)
def _mni_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """nilearn's bundled MNI152 2009a brain template and mask at 2 mm (the registration's target)."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2), datasets.load_mni152_brain_mask(resolution=2)


def registration_figure(warped: nib.Nifti1Image) -> Figure:
    """The subject resampled into MNI space, with the template's brain outline (red) and its
    grey/white matter boundary (cyan): they should follow the subject's brain edge and anatomy."""
    template, template_mask = _mni_template()
    t1 = template.get_fdata(dtype=np.float32)
    brain = template_mask.get_fdata(dtype=np.float32) > 0.5
    white_matter_level = float(np.percentile(t1[brain], 60))
    subject = np.asarray(warped.dataobj, dtype=np.float32)
    inside = subject[subject > 0]
    vmin, vmax = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    bounds = world_bounds(template.shape, template.affine)
    fig, axes = plt.subplots(1, len(MNI_CUTS), figsize=(3.0 * len(MNI_CUTS), 3.2), dpi=DPI)
    for ax, (view, position) in zip(axes, MNI_CUTS):
        in_plane = bounds[list(VIEWS[view][1])]
        extent = (in_plane[0, 0], in_plane[0, 1], in_plane[1, 0], in_plane[1, 1])
        _show(ax, world_plane(subject, warped.affine, view, position, in_plane, 1.0), in_plane, "gray", vmin, vmax)
        edge = np.nan_to_num(world_plane(brain, template_mask.affine, view, position, in_plane, 1.0, order=0))
        tissue = np.nan_to_num(world_plane(t1, template.affine, view, position, in_plane, 1.0))
        if edge.any():
            ax.contour(edge, levels=[0.5], colors="red", linewidths=1.0, origin="lower", extent=extent)
            ax.contour(tissue * edge, levels=[white_matter_level], colors="cyan", linewidths=0.6,
                       origin="lower", extent=extent)
        ax.set_title(_cut_title(view, position), fontsize=9)
    fig.tight_layout()
    return fig


def detection_label(row: pd.Series, rank: int) -> str:
    """Row title of a montage: rank, probability, world position and region (n/a when unknown)."""
    region = " / ".join(str(row[c]) for c in ("region", "lobe", "hemisphere") if c in row and pd.notna(row[c]))
    return (f"#{rank}  p = {row['probability']:.2f}\n({row['x']:.0f}, {row['y']:.0f}, {row['z']:.0f}) mm\n"
            f"region: {region or 'n/a'}")


def montage_figure(table: pd.DataFrame, channels: list[Channel], empty_text: str) -> Figure:
    """One row per detection: axial and coronal zooms (``ZOOM_MM`` wide) of every channel.

    The coronal view shows a bleed's phase dipole along B0 (world z for scanner-aligned images).
    """
    views = ("axial", "coronal")
    if table.empty:
        fig, ax = plt.subplots(figsize=(6, 0.8), dpi=DPI)
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12)
        ax.axis("off")
        return fig
    n_cols = len(channels) * len(views)
    fig, axes = plt.subplots(len(table), n_cols + 1, figsize=(1.7 * n_cols + 2.2, 1.75 * len(table)), dpi=DPI,
                             squeeze=False, gridspec_kw={"width_ratios": [1.3] + [1] * n_cols})
    half = ZOOM_MM / 2
    for rank, (row_axes, (_, row)) in enumerate(zip(axes, table.iterrows()), start=1):
        centre = row[["x", "y", "z"]].to_numpy(dtype=float)
        row_axes[0].text(0, 0.5, detection_label(row, rank), va="center", fontsize=8, family="monospace")
        row_axes[0].axis("off")
        for ax, (channel, view) in zip(row_axes[1:], [(c, v) for c in channels for v in views]):
            normal, (u, v) = VIEWS[view]
            in_plane = np.array([[centre[u] - half, centre[u] + half], [centre[v] - half, centre[v] + half]])
            plane = world_plane(channel.data, channel.affine, view, centre[normal], in_plane, ZOOM_SPACING_MM)
            _show(ax, plane, in_plane, channel.cmap, channel.vmin, channel.vmax)
            _mark(ax, centre[u], centre[v], ZOOM_MM)
            if rank == 1:
                ax.set_title(f"{channel.name}\n{view}", fontsize=8)
    fig.tight_layout()
    return fig


def _mark(ax: Axes, u: float, v: float, width_mm: float) -> None:
    """Yellow ticks pointing at (u, v), off its centre so that the lesion itself stays visible."""
    near, far = width_mm / 8, width_mm / 4.8
    for du, dv in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ax.plot([u + du * near, u + du * far], [v + dv * near, v + dv * far], color="yellow", linewidth=1)


def call_figure(row: pd.Series, channels: list[Channel], projected: Channel) -> Figure:
    """One call, large enough to judge: ``projected`` (the SWI, else the magnitude) in an axial
    context view (``CONTEXT_MM``) and its minimum-intensity projection over ``MINIP_MM`` (a vein
    runs on across slices, a microbleed does not), then axial and coronal zooms (``ZOOM_MM``) of
    every channel (the coronal view shows a bleed's phase dipole along B0)."""
    centre = row[["x", "y", "z"]].to_numpy(dtype=float)
    panels = [(projected, "axial", CONTEXT_MM, False), (projected, "axial", CONTEXT_MM, True)]
    panels += [(channel, view, ZOOM_MM, False) for channel in channels for view in ("axial", "coronal")]
    fig, axes = plt.subplots(1, len(panels), figsize=(CALL_PANEL_IN * len(panels), CALL_PANEL_IN + 0.3), dpi=DPI,
                             squeeze=False, layout="constrained")
    for ax, (channel, view, width, minip) in zip(axes[0], panels):
        normal, (u, v) = VIEWS[view]
        in_plane = np.array([[centre[u] - width / 2, centre[u] + width / 2],
                             [centre[v] - width / 2, centre[v] + width / 2]])
        cut = world_minip if minip else world_plane
        spacing = CONTEXT_SPACING_MM if width > ZOOM_MM else ZOOM_SPACING_MM
        _show(ax, cut(channel.data, channel.affine, view, centre[normal], in_plane, spacing), in_plane,
              channel.cmap, channel.vmin, channel.vmax)
        _mark(ax, centre[u], centre[v], width)
        title = f"minIP {MINIP_MM:g} mm" if minip else view
        ax.set_title(f"{channel.name}\n{title}, {width:g} mm", fontsize=8)
    return fig


def sessions_figure(earlier: Channel, later: Channel, xyz_earlier: npt.ArrayLike, xyz_later: npt.ArrayLike) -> Figure:
    """One lesion at two sessions, at the same anatomical place: axial context (``CONTEXT_MM``) and
    zoom (``ZOOM_MM``) of the earlier session at ``xyz_earlier``, then of the later one at
    ``xyz_later`` (each in its own world space)."""
    panels = [(earlier, xyz_earlier, CONTEXT_MM), (earlier, xyz_earlier, ZOOM_MM),
              (later, xyz_later, CONTEXT_MM), (later, xyz_later, ZOOM_MM)]
    fig, axes = plt.subplots(1, len(panels), figsize=(CALL_PANEL_IN * len(panels), CALL_PANEL_IN + 0.3), dpi=DPI,
                             squeeze=False, layout="constrained")
    normal, (u, v) = VIEWS["axial"]
    for ax, (channel, xyz, width) in zip(axes[0], panels):
        centre = np.asarray(xyz, dtype=float)
        in_plane = np.array([[centre[u] - width / 2, centre[u] + width / 2],
                             [centre[v] - width / 2, centre[v] + width / 2]])
        spacing = CONTEXT_SPACING_MM if width > ZOOM_MM else ZOOM_SPACING_MM
        _show(ax, world_plane(channel.data, channel.affine, "axial", centre[normal], in_plane, spacing), in_plane,
              channel.cmap, channel.vmin, channel.vmax)
        _mark(ax, centre[u], centre[v], width)
        ax.set_title(f"{channel.name}\naxial, {width:g} mm", fontsize=8)
    return fig


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


def png_bytes(fig: Figure) -> bytes:
    """A figure as an 8-bit palette PNG (greys and a few overlay colours fit in 256; a quarter
    smaller than RGBA, and pages carry their figures); the figure is freed."""
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=DPI)
    plt.close(fig)
    palette = io.BytesIO()
    Image.open(rgba).convert("RGB").quantize(colors=256).save(palette, format="PNG", optimize=True)
    return palette.getvalue()


def save_png(fig: Figure, path: str | Path) -> None:
    """Write a figure as PNG, atomically, and free it."""
    data = png_bytes(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
