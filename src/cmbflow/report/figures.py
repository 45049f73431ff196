"""QC figures of one scan: mask and registration overlays, views around detections.

Every cut is resampled on a plane of world (RAS+) axes from the image affine, so figures look
the same whatever the voxel order or orientation of the file: axial cuts show world x to the
right (subject's right on the right, neurological convention) and y up; coronal x and z;
sagittal y and z.

The panels are grey images with an outline, tick marks and a title, so they are drawn with
numpy and Pillow: matplotlib's figure machinery cost a report job about 8 s of CPU and 0.6 s of
import for them (benchmarks/RESULTS.md). The cohort plots are in :mod:`cmbflow.report.plots`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from cmbflow.image import atomic_path, ijk_to_xyz
from cmbflow.patches import sample_world

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
#: Cuts of the registration figure, in MNI mm: through the basal ganglia, centrum semiovale, brainstem.
MNI_CUTS = (("axial", -20.0), ("axial", 5.0), ("axial", 35.0), ("coronal", -18.0), ("sagittal", 12.0))
#: Panel widths (pixels): a cut of the whole head, a zoom of the montages, a view of one call.
OVERVIEW_PX = 240
MONTAGE_PX = 120
CALL_PX = 150
FONT_PX = 11
GAP_PX = 4
RED, CYAN, YELLOW = (230, 30, 30), (0, 210, 230), (255, 220, 0)


@dataclass(frozen=True)
class Channel:
    """One image shown in a montage column, with its display window (grey, ``vmin`` black)."""

    name: str
    data: npt.NDArray[np.floating]
    affine: npt.NDArray[np.float64]
    vmin: float
    vmax: float

    @classmethod
    def windowed(cls, name: str, img: nib.Nifti1Image, mask: npt.NDArray[np.bool_], symmetric: bool = False) -> "Channel":
        """A channel windowed on the brain's 1st-99.5th percentiles (±99th of |value| if ``symmetric``)."""
        data = np.asarray(img.dataobj, dtype=np.float32)
        values = data[mask] if mask.any() else data.ravel()
        if symmetric:
            half = float(np.percentile(np.abs(values), 99)) or 1.0
            return cls(name, data, img.affine, -half, half)
        low, high = np.percentile(values, [1, 99.5])
        return cls(name, data, img.affine, float(low), float(high) if high > low else float(low) + 1)


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
    """A cut of ``volume`` on a world-axis plane (rows: vertical axis, upwards; columns: horizontal axis).

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


# --------------------------------------------------------------------------- drawing


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_PX)  # bundled with Pillow: nothing to install or download


def _grey(plane: npt.NDArray[np.floating], vmin: float, vmax: float) -> npt.NDArray[np.uint8]:
    """A cut as an RGB image: the window's grey levels, black outside the image, top row = highest position."""
    scaled = np.nan_to_num(np.clip((plane - vmin) / (vmax - vmin), 0, 1), nan=0.0)
    return np.repeat((scaled * 255).astype(np.uint8)[::-1, :, None], 3, axis=2)


def _outline(rgb: npt.NDArray[np.uint8], region: npt.NDArray, colour: tuple[int, int, int]) -> None:
    """Colour the edge pixels of a region of a cut (cut orientation, as :func:`world_plane`) in place."""
    region = np.nan_to_num(region) > 0.5
    rgb[(region & ~ndi.binary_erosion(region))[::-1]] = colour


def _panel(rgb: npt.NDArray[np.uint8], width_px: int, title: str = "", mark: bool = False) -> Image.Image:
    """A cut scaled to ``width_px`` (nearest: voxels stay visible) under its title; ``mark``: yellow
    ticks pointing at the centre, off it so that the lesion itself stays visible."""
    image = Image.fromarray(rgb)
    image = image.resize((width_px, max(1, round(image.height * width_px / image.width))), Image.Resampling.NEAREST)
    if mark:
        draw, (cu, cv) = ImageDraw.Draw(image), (image.width / 2, image.height / 2)
        near, far = image.width / 8, image.width / 4.8
        for du, dv in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            draw.line([(cu + du * near, cv + dv * near), (cu + du * far, cv + dv * far)], fill=YELLOW, width=1)
    if not title:
        return image
    band = (title.count("\n") + 1) * (FONT_PX + 3) + 3
    panel = Image.new("RGB", (image.width, image.height + band), "white")
    panel.paste(image, (0, band))
    ImageDraw.Draw(panel).multiline_text((image.width // 2, 2), title, fill="black", font=_font(), anchor="ma",
                                         align="center")
    return panel


def _text(text: str, width_px: int, height_px: int) -> Image.Image:
    panel = Image.new("RGB", (width_px, height_px), "white")
    ImageDraw.Draw(panel).multiline_text((GAP_PX, height_px // 2), text, fill="black", font=_font(), anchor="lm")
    return panel


def _tile(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of panels, top-aligned, on white."""
    width = max(sum(panel.width + GAP_PX for panel in row) for row in rows) + GAP_PX
    heights = [max(panel.height for panel in row) for row in rows]
    canvas = Image.new("RGB", (width, sum(heights) + GAP_PX * (len(rows) + 1)), "white")
    y = GAP_PX
    for row, height in zip(rows, heights):
        x = GAP_PX
        for panel in row:
            canvas.paste(panel, (x, y))
            x += panel.width + GAP_PX
        y += height + GAP_PX
    return canvas


def _square(centre: npt.NDArray[np.float64], view: str, width_mm: float) -> npt.NDArray[np.float64]:
    """In-plane bounds of a square view of ``width_mm`` centred on a world position."""
    _, (u, v) = VIEWS[view]
    return np.array([[centre[u] - width_mm / 2, centre[u] + width_mm / 2],
                     [centre[v] - width_mm / 2, centre[v] + width_mm / 2]])


def _cut_title(view: str, position_mm: float) -> str:
    return f"{view} {_AXIS_NAMES[VIEWS[view][0]]} = {round(position_mm)} mm"


def _overview_spacing(bounds: npt.NDArray, pixels: int = 220) -> float:
    """Sampling step that draws the largest side of the field of view in about ``pixels`` samples."""
    return max(0.5, float(np.ptp(bounds, axis=1).max()) / pixels)


# --------------------------------------------------------------------------- figures


def mask_figure(magnitude: nib.Nifti1Image, mask: nib.Nifti1Image) -> Image.Image:
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
    panels = []
    for view, position in cuts:
        in_plane = bounds[list(VIEWS[view][1])]
        rgb = _grey(world_plane(channel.data, channel.affine, view, position, in_plane, spacing),
                    channel.vmin, channel.vmax)
        _outline(rgb, world_plane(inside, mask.affine, view, position, in_plane, spacing, order=0), RED)
        panels.append(_panel(rgb, OVERVIEW_PX, _cut_title(view, position)))
    return _tile([panels])


@lru_cache(maxsize=1)
def _mni_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """nilearn's bundled MNI152 2009a brain template and mask at 2 mm (the registration's target)."""
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2), datasets.load_mni152_brain_mask(resolution=2)


def registration_figure(warped: nib.Nifti1Image) -> Image.Image:
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
    panels = []
    for view, position in MNI_CUTS:
        in_plane = bounds[list(VIEWS[view][1])]
        rgb = _grey(world_plane(subject, warped.affine, view, position, in_plane, 1.0), vmin, vmax)
        edge = np.nan_to_num(world_plane(brain, template_mask.affine, view, position, in_plane, 1.0, order=0))
        tissue = np.nan_to_num(world_plane(t1, template.affine, view, position, in_plane, 1.0))
        _outline(rgb, (tissue * edge) >= white_matter_level, CYAN)
        _outline(rgb, edge, RED)
        panels.append(_panel(rgb, OVERVIEW_PX, _cut_title(view, position)))
    return _tile([panels])


def detection_label(row: pd.Series, rank: int) -> str:
    """Row title of a montage: rank, probability, world position and region (n/a when unknown)."""
    region = " / ".join(str(row[c]) for c in ("region", "lobe", "hemisphere") if c in row and pd.notna(row[c]))
    return (f"#{rank}  p = {row['probability']:.2f}\n({row['x']:.0f}, {row['y']:.0f}, {row['z']:.0f}) mm\n"
            f"region: {region or 'n/a'}")


def _view(channel: Channel, centre: npt.NDArray[np.float64], view: str, width_mm: float, width_px: int,
          title: str = "", minip: bool = False) -> Image.Image:
    """A square view of a channel centred on a detection, marked."""
    cut = world_minip if minip else world_plane
    spacing = CONTEXT_SPACING_MM if width_mm > ZOOM_MM else ZOOM_SPACING_MM
    plane = cut(channel.data, channel.affine, view, centre[VIEWS[view][0]], _square(centre, view, width_mm), spacing)
    return _panel(_grey(plane, channel.vmin, channel.vmax), width_px, title, mark=True)


def montage_figure(table: pd.DataFrame, channels: list[Channel], empty_text: str) -> Image.Image:
    """One row per detection: axial and coronal zooms (``ZOOM_MM`` wide) of every channel.

    The coronal view shows a bleed's phase dipole along B0 (world z for scanner-aligned images).
    """
    if table.empty:
        return _text(empty_text, 6 * MONTAGE_PX, 2 * FONT_PX)
    columns = [(channel, view) for channel in channels for view in ("axial", "coronal")]
    rows = []
    for rank, (_, row) in enumerate(table.iterrows(), start=1):
        centre = row[["x", "y", "z"]].to_numpy(dtype=float)
        zooms = [_view(channel, centre, view, ZOOM_MM, MONTAGE_PX, f"{channel.name}\n{view}" if rank == 1 else "")
                 for channel, view in columns]
        rows.append([_text(detection_label(row, rank), 2 * MONTAGE_PX, zooms[0].height), *zooms])
    return _tile(rows)


def call_figure(row: pd.Series, channels: list[Channel], projected: Channel) -> Image.Image:
    """One call, large enough to judge: ``projected`` (the SWI, else the magnitude) in an axial
    context view (``CONTEXT_MM``) and its minimum-intensity projection over ``MINIP_MM`` (a vein
    runs on across slices, a microbleed does not), then axial and coronal zooms (``ZOOM_MM``) of
    every channel (the coronal view shows a bleed's phase dipole along B0)."""
    centre = row[["x", "y", "z"]].to_numpy(dtype=float)
    panels = [_view(projected, centre, "axial", CONTEXT_MM, CALL_PX, f"{projected.name}\naxial, {CONTEXT_MM:g} mm"),
              _view(projected, centre, "axial", CONTEXT_MM, CALL_PX,
                    f"{projected.name}\nminIP {MINIP_MM:g} mm, {CONTEXT_MM:g} mm", minip=True)]
    panels += [_view(channel, centre, view, ZOOM_MM, CALL_PX, f"{channel.name}\n{view}, {ZOOM_MM:g} mm")
               for channel in channels for view in ("axial", "coronal")]
    return _tile([panels])


def sessions_figure(earlier: Channel, later: Channel, xyz_earlier: npt.ArrayLike, xyz_later: npt.ArrayLike) -> Image.Image:
    """One lesion at two sessions, at the same anatomical place: axial context (``CONTEXT_MM``) and
    zoom (``ZOOM_MM``) of the earlier session at ``xyz_earlier``, then of the later one at
    ``xyz_later`` (each in its own world space)."""
    panels = [_view(channel, np.asarray(xyz, dtype=float), "axial", width, CALL_PX,
                    f"{channel.name}\naxial, {width:g} mm")
              for channel, xyz in ((earlier, xyz_earlier), (later, xyz_later)) for width in (CONTEXT_MM, ZOOM_MM)]
    return _tile([panels])


def png_bytes(image: Image.Image) -> bytes:
    """An image as an 8-bit palette PNG (greys and a few overlay colours fit in 256; pages carry their figures)."""
    palette = io.BytesIO()
    image.convert("RGB").quantize(colors=256).save(palette, format="PNG", optimize=True)
    return palette.getvalue()


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write an image as PNG, atomically."""
    data = png_bytes(image)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
