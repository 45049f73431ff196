"""The BIDS-App command line: ``cmbflow BIDS_DIR OUTPUT_DIR participant|group [options] [snakemake options]``.

Analysis levels follow the BIDS-Apps convention, so that one array task per subject works:

- ``participant`` runs the selected subjects' steps. With ``--participant-label`` or
  ``--exclude-participant-label`` it writes only those subjects' outputs; without either it also
  writes the cohort tables, so that one call processes a whole dataset.
- ``group`` aggregates the subjects whose outputs exist and never starts participant work.

The outputs every subject shares (``dataset_description.json``, ``.bidsignore``, the MARS atlas)
are made here, once, under a lock on the output folder, before Snakemake starts: N concurrent
participant runs into one folder then never write the same file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmbflow.bids_validation import report_validation
from cmbflow.resources import workflow_dir

#: Snakemake options that say how many jobs or which executor run the workflow.
_SCHEDULING = ("--cores", "-c", "--jobs", "-j", "--profile", "--executor", "-e")
_DRY_RUN = ("-n", "--dry-run", "--dryrun")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: otherwise argparse takes snakemake's --config for our --configfile.
    parser = argparse.ArgumentParser(
        prog="cmbflow",
        allow_abbrev=False,
        description="Detect cerebral microbleeds in a BIDS dataset. Options not listed here go to "
        "snakemake (e.g. --cores 8, --profile profiles/slurm, --dry-run).",
    )
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: the selected subjects (and, for a whole dataset, the cohort tables); "
                        "group: the cohort tables of the subjects already processed")
    parser.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                        help="subjects to process (with or without the sub- prefix)")
    parser.add_argument("--exclude-participant-label", "--exclude_participant_label", nargs="+", default=[],
                        help="subjects to leave out")
    parser.add_argument("--work-dir", "-w", type=Path,
                        help="Snakemake's state (locks, metadata, its logs) and intermediate files; "
                        "default OUTPUT_DIR/work")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"],
                        help="where FRST and the classifier run (default cpu; auto = CUDA when present)")
    parser.add_argument("--model-dir", type=Path, help="a trained model folder (default: the shipped model)")
    parser.add_argument("--threshold", type=float, help="least probability of a call (default: the model card's)")
    parser.add_argument("--ratings-dir", type=Path,
                        help="raters' verdicts on the calls (docs/ratings.md): the cohort tables add the consensus")
    parser.add_argument("--skip-bids-validation", action="store_true", help="do not run bids-validator first")
    parser.add_argument("--configfile", type=Path, help="a config YAML replacing config/config.yaml")
    parser.add_argument("--config", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides, merged with the options above (which win)")
    return parser


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The user's ``--config`` entries, then this command's own (later entries win, nested keys merge).

    Values are JSON, which Snakemake reads as YAML: paths with spaces and labels such as "001"
    stay strings.
    """
    own: dict[str, object] = {
        "bids_dir": str(args.bids_dir.resolve()),
        "output_dir": str(args.output_dir.resolve()),
        "work_dir": str(work_dir(args)),
        "analysis_level": args.analysis_level,
    }
    if args.participant_label:
        own["participant_label"] = args.participant_label
    if args.exclude_participant_label:
        own["exclude_participant_label"] = args.exclude_participant_label
    if args.device:
        own["device"] = args.device
    if args.ratings_dir:
        own["ratings_dir"] = str(args.ratings_dir.resolve())
    classifier = {key: value for key, value in (("model_dir", args.model_dir and str(args.model_dir.resolve())),
                                                 ("threshold", args.threshold)) if value is not None}
    if classifier:
        own["classifier"] = classifier
    return [*args.config, *(f"{key}={json.dumps(value)}" for key, value in own.items())]


def targets(args: argparse.Namespace) -> list[str]:
    if args.analysis_level == "group":
        return ["group"]
    return ["participant"] if args.participant_label or args.exclude_participant_label else ["all"]


def work_dir(args: argparse.Namespace) -> Path:
    return (args.work_dir or args.output_dir / "work").resolve()


def snakemake_command(args: argparse.Namespace, snakemake_args: list[str]) -> list[str]:
    # Targets first: options such as --allowed-rules take every word after them.
    cmd = [sys.executable, "-m", "snakemake", *targets(args), "--snakefile", str(workflow_dir() / "Snakefile"),
           "--directory", str(work_dir(args))]
    if args.configfile:
        cmd += ["--configfile", str(args.configfile.resolve())]
    cmd += ["--config", *config_overrides(args)]
    if not any(a in _SCHEDULING or a.startswith(tuple(f"{s}=" for s in _SCHEDULING)) for a in snakemake_args):
        cmd += ["--cores", "all"]
    if args.analysis_level == "group":  # the sessions' outputs are inputs here, never remade
        cmd += ["--allowed-rules", "cohort", "cohort_report", "longitudinal", "cohort_longitudinal"]
    return cmd + [_shipped_profile(arg, before) for before, arg in zip([None, *snakemake_args], snakemake_args)]


def _shipped_profile(arg: str, before: str | None) -> str:
    """``--profile slurm`` names the profile shipped with cmbflow unless a folder of that name is here,
    so that an installed cmbflow finds its profiles from any folder."""
    if before != "--profile" or Path(arg).exists():
        return arg
    shipped = workflow_dir() / "profiles" / arg
    return str(shipped) if shipped.is_dir() else arg


@contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output folder, held by one cmbflow invocation at a time."""
    lock = output_dir / "logs" / "shared_outputs.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_shared_outputs(bids_dir: Path, output_dir: Path) -> None:
    """Write the outputs every subject shares, where missing (the rules of the same names make the same)."""
    from cmbflow.derivatives import (
        BIDSIGNORE,
        DATASET_DESCRIPTION,
        write_dataset_description,
    )
    from cmbflow.mars import ATLAS_NAME, ATLAS_TABLE, write_mars_atlas

    with output_lock(output_dir):
        description, bidsignore = output_dir / DATASET_DESCRIPTION, output_dir / BIDSIGNORE
        if not description.exists() or not bidsignore.exists():
            write_dataset_description(description, bidsignore, bids_dir)
        atlas = output_dir / "atlas"
        if not (atlas / ATLAS_NAME).exists() or not (atlas / ATLAS_TABLE).exists():
            write_mars_atlas(atlas / ATLAS_NAME, atlas / ATLAS_TABLE)


def run(argv: list[str]) -> int:
    args, snakemake_args = build_parser().parse_known_args(argv)
    if not args.bids_dir.is_dir():
        sys.exit(f"cmbflow: no BIDS dataset at {args.bids_dir}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    dry_run = any(a in _DRY_RUN for a in snakemake_args)
    if args.analysis_level == "participant":
        if not args.skip_bids_validation:
            report_validation(args.bids_dir, args.participant_label, args.exclude_participant_label)
        if not dry_run:
            make_shared_outputs(args.bids_dir.resolve(), args.output_dir.resolve())
    return subprocess.call(snakemake_command(args, snakemake_args))
