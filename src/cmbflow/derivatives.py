"""BIDS-Derivatives metadata: dataset_description.json and the Sources of each output."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cmbflow import __version__
from cmbflow.image import atomic_path, write_json

CODE_URL = "https://github.com/cmbflow/cmbflow"
#: Files at the top of the output folder, shared by every subject (rule dataset_description, and
#: cmbflow.bids_app before concurrent participant runs).
DATASET_DESCRIPTION = "dataset_description.json"
BIDSIGNORE = ".bidsignore"

#: Name endings (before the extension) of a scan's stage-1 outputs, as the workflow's rules write
#: them; training writes the same in one process (cmbflow.stages.run_stage1), and training and
#: evaluation read them back.
N4_MAGNITUDE = "_part-mag_desc-n4_T2starw"
BRAIN_MASK = "_desc-brain_mask"
HPPHASE = "_part-phase_desc-hpphase_T2starw"
SWI = "_desc-swi_T2starw"
STAGE1_TABLE = "_desc-stage1_detections"
#: Template space of nilearn's bundled MNI152 images: its files are
#: ``mni_icbm152_*_tal_nlin_sym_09a`` (ICBM 2009a nonlinear symmetric).
MNI_SPACE = "MNI152NLin2009aSym"
#: The registration's affine (ANTs), subject T2*w to MNI.
MNI_XFM = f"_from-T2starw_to-{MNI_SPACE}_mode-image_xfm.mat"


#: Output files that BIDS 1.10 has no name for (the validator skips them): folders that are not
#: per-subject data, the detection tables and QC metrics (no such suffix yet) and the transforms
#: (the xfm datatype is still a proposal, BEP 014). Folder names without a trailing slash:
#: bids-validator-deno 3.0.2 reports the folder itself as not included for ``group/``.
NON_BIDS = ("group", "logs", "benchmarks", "atlas", "work", "xfm", "figures", "*_report.html", "*_detections.tsv", "*_detections.json",
            "*_metrics.json", "*_markups.mrk.json")


def write_dataset_description(path: str | Path, bidsignore: str | Path, bids_dir: str | Path) -> None:
    """The derivatives' dataset_description.json, linking back to the raw dataset, and .bidsignore."""
    with atomic_path(bidsignore) as tmp:
        tmp.write_text("".join(f"{entry}\n" for entry in NON_BIDS))
    write_json(
        {
            "Name": "cmbflow: cerebral microbleed detections",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "cmbflow", "Version": __version__, "CodeURL": CODE_URL}],
            "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        },
        path,
    )


def write_run_config(config: dict, logs_dir: str | Path) -> Path:
    """The resolved config of this run, with the cmbflow version and command line, as
    ``logs_dir/run-<UTC time>-<pid>_config.yaml``: one file per run, also for runs started at once."""
    now = datetime.now(timezone.utc)
    path = Path(logs_dir) / f"run-{now:%Y%m%dT%H%M%S}-{os.getpid()}_config.yaml"
    record = {"cmbflow_version": __version__, "started": now.isoformat(timespec="seconds"),
              "command": sys.argv, "config": config}
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def bids_uri(path: str | Path, dataset: str = "") -> str:
    """BIDS URI of a file: ``bids:raw:sub-01/anat/...`` for inputs, ``bids::sub-01/...`` for ours."""
    parts = Path(path).parts
    start = next((i for i, p in enumerate(parts) if p.startswith("sub-")), len(parts) - 1)
    return f"bids:{dataset}:" + "/".join(parts[start:])


def sidecar(raw_sources: list[str | Path] = (), derived_sources: list[str | Path] = (), **fields: object) -> dict:
    """A JSON sidecar with its ``Sources`` (raw inputs and cmbflow's own derivatives)."""
    sources = [bids_uri(p, "raw") for p in raw_sources] + [bids_uri(p) for p in derived_sources]
    return {"Sources": sources, **fields}
