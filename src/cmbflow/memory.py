"""Peak memory of each per-subject job against the size of its image, checked before loading it.

A job that would need more than its rule's ``mem_mb`` stops at once with one line saying how
much it needs, instead of being killed part-way by the kernel or by SLURM.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib

from cmbflow.errors import InputError

#: Peak resident memory (MB) of a rule's job = fixed part (Python, numpy, torch, antspyx loaded) +
#: MB per million voxels of the image it reads (for anatomy: the input file, every echo of a
#: 4D file included). Fitted to peak RSS measured at 3.5 and 11.9 million voxels and rounded up
#: (benchmarks/RESULTS.md, "Memory against image size"); subject_summary and the cohort rule read
#: no voxels. anatomy: the largest fixed and per-voxel parts of the three jobs it replaced (N4,
#: brain mask, registration), which ran one after another; detect: likewise of candidates
#: (680, 20) and classify (1030, 12), its two stages.
PEAK_MB: dict[str, tuple[float, float]] = {
    "anatomy": (760, 75),
    "phase_preproc": (560, 110),
    "detect": (1030, 20),
}


def estimate_peak_mb(rule: str, n_voxels: int) -> int:
    """Expected peak memory (MB) of ``rule`` on an image of ``n_voxels`` voxels."""
    fixed, per_mvoxel = PEAK_MB[rule]
    return math.ceil(fixed + per_mvoxel * n_voxels / 1e6)


def check_memory(rule: str, image: str | Path, mem_mb: int, label: str | None = None) -> None:
    """Raise :class:`InputError` when ``rule`` on ``image`` would need more than ``mem_mb`` MB.

    Rules without a measured figure, and images whose header cannot be read (the job's own
    loading reports that, with the reason), pass.
    """
    if rule not in PEAK_MB:
        return
    try:
        shape = nib.load(image).shape  # the header only
    except Exception:  # noqa: BLE001 - the job's own loading reports an unreadable file, with the reason
        return
    n_voxels = math.prod(shape)
    need = estimate_peak_mb(rule, n_voxels)
    if need > mem_mb:
        raise InputError(
            f"{n_voxels / 1e6:.1f} million voxels ({'x'.join(map(str, shape))}) need about "
            f"{need} MB in {rule}, more than its mem_mb of {mem_mb} MB",
            subject=label,
            path=image,
            fix=f"give the rule more memory (snakemake --set-resources {rule}:mem_mb={_round_up(need)}) "
            "or crop / resample the image",
        )


def _round_up(mb: int) -> int:
    return math.ceil(mb * 1.2 / 500) * 500
