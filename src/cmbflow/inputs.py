"""From a BIDS dataset to one set of inputs per subject/session.

:func:`find_files` matches files against the config's filters; :func:`collect_subject_inputs`
chooses one scan where a subject has several (the config's ``select`` rules), picks the echo
(MEGRE), pairs the phase with its magnitude, and attaches an optional T1w. Both run when the
workflow starts, so they only read sidecars, never images. A subject whose files contradict each
other (echo times, a sidecar that is not JSON, two files for one scan) gets its one-line error as
``problem`` instead of stopping the cohort: its first job reports it, and ``--keep-going``
finishes the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from bids.layout import BIDSLayout, BIDSLayoutIndexer, Query

from cmbflow.errors import InputError
from cmbflow.image import read_sidecar
from cmbflow.phase import select_echo

if TYPE_CHECKING:
    from cmbflow.config import Config

log = logging.getLogger(__name__)

#: Entities that tell several scans of one subject/session apart, chosen in this order by the
#: config's ``select`` rules; with their file-name keys.
_SCAN_ENTITIES = {"acquisition": "acq", "run": "run"}

Row = Mapping[str, str]  # one matched file: its entities (as in the file name) and "path"


@dataclass(frozen=True)
class SubjectInputs:
    """The input files of one subject (and session)."""

    subject: str
    session: str | None
    mag: Path
    phase: Path | None
    t1w: Path | None
    echo: int | None
    problem: str | None = None
    choice: str | None = None  # which scan was used when there were several, and by which rule

    @property
    def wildcards(self) -> dict[str, str]:
        """Values of the workflow's path wildcards (rules/common.smk): the session label, and the
        session's folder and file-name parts, empty without a session (for datasets that mix both)."""
        if not self.session:
            return {"subject": self.subject, "ses_dir": "", "ses_name": ""}
        return {"subject": self.subject, "session": self.session, "ses_dir": f"/ses-{self.session}",
                "ses_name": f"_ses-{self.session}"}

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def find_files(cfg: Config) -> dict[str, list[dict[str, str]]]:
    """The rows of each ``pybids_inputs`` component: for each matching file, its ``wildcards``
    entities (as written in the file name) and its ``path``.

    pybids itself, not snakebids' generate_inputs: that needs one path template per component,
    and real datasets mix subjects with and without sessions, runs or acquisitions. In filters,
    true/false mean that the entity must be present/absent. Not validated as BIDS, so
    non-standard suffixes (``_swi``, ``_GRE``) can be matched.
    """
    db = str(cfg.pybidsdb_dir.resolve()) if cfg.pybidsdb_dir else None
    layout = BIDSLayout(cfg.bids_dir, validate=False, database_path=db,
                        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))
    subjects = {"subject": cfg.participant_label} if cfg.participant_label else {}
    rows = {}
    for name, spec in cfg.pybids_inputs.items():
        query = {key: _query(value) for key, value in spec.filters.items()} | subjects
        rows[name] = [
            {e: str(f.entities[e]) for e in spec.wildcards if e in f.entities} | {"path": f.path}
            for f in layout.get(**query)
            if "subject" in f.entities and f.entities["subject"] not in cfg.exclude_participant_label
        ]
    return rows


def _query(value: str | bool | list[str | bool]) -> object:
    if isinstance(value, list):
        return [_query(v) for v in value]
    if isinstance(value, bool):  # the entity present / absent
        return Query.ANY if value else Query.NONE
    return value


def choose_echo(echo_times_s: Mapping[int, float | None], rule: str | int, *, label: str) -> int:
    """Pick an echo number from {echo number: TE in s} by the configured rule."""
    echoes = sorted(echo_times_s)
    times = [echo_times_s[e] for e in echoes]
    if isinstance(rule, int):  # an echo entity value, which need not count from 1
        if rule not in echoes:
            raise InputError(f"echo {rule} requested but the data have echoes {echoes}", subject=label,
                             fix="set 'echo' in the config to one that exists")
        rule = echoes.index(rule) + 1
    return echoes[select_echo(len(echoes), None if None in times else times, rule, subject=label)]


def choose_scan(rows: Sequence[Row], select: Mapping[str, str], *, label: str) -> tuple[list[Row], str | None]:
    """The rows of one scan, chosen entity by entity (acquisition, then run) by the config's rules.

    A rule is ``first`` or ``last`` (runs by number, acquisitions by label; a file without the
    entity comes first) or a value that must exist. Also returns what was chosen, when there was a
    choice, for the log: one scan per session is what a microbleed count refers to.
    """
    notes = []
    for entity, key in _SCAN_ENTITIES.items():
        values = sorted({r.get(entity, "") for r in rows},
                        key=lambda v: (v != "", int(v) if entity == "run" and v else 0, v))
        if len(values) == 1:
            continue
        rule = select[entity]
        names = {v: f"{key}-{v}" if v else f"no {key}-" for v in values}
        shown = ", ".join(names.values())
        if rule in ("first", "last"):
            value = values[0 if rule == "first" else -1]
        else:
            value = next((v for v in values if v == rule or (entity == "run" and v and int(v) == int(rule))), None)
            if value is None:
                raise InputError(f"{entity} {rule} requested but the data have {shown}", subject=label,
                                 fix=f"set select.{entity} in the config to one that exists, or to first or last")
        rows = [r for r in rows if r.get(entity, "") == value]
        notes.append(f"{len(values)} {entity}s ({shown}): using {names[value]} (config select.{entity}: {rule})")
    return list(rows), "; ".join(notes) or None


def collect_subject_inputs(
    components: Mapping[str, Iterable[Row]],
    echo_rule: str | int,
    select: Mapping[str, str],
) -> list[SubjectInputs]:
    """Group matched files (:func:`find_files` rows) into one entry per subject/session.

    ``components`` maps component names (see :data:`cmbflow.config.COMPONENTS`) to their rows;
    single- and multi-echo magnitudes are pooled, one scan is chosen by ``select``
    ({entity: rule}, see :func:`choose_scan`), and a phase is paired with the magnitude of the
    same entities.
    """
    mags = _by_session([*components.get("mag", []), *components.get("megre_mag", [])])
    phases = {_key(r): r for r in [*components.get("phase", []), *components.get("megre_phase", [])]}
    t1ws = _by_session(components.get("t1w", []))

    subjects = []
    for (subject, session), rows in sorted(mags.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        try:
            chosen, choice = choose_scan(rows, select, label=label)
            subjects.append(_subject_inputs(subject, session, label, chosen, phases, t1ws.get((subject, session), []),
                                            echo_rule, choice))
        except InputError as err:
            log.warning("%s", err)
            subjects.append(SubjectInputs(subject, session, Path(rows[-1]["path"]), None, None, None, problem=str(err)))
    return subjects


def _by_session(rows: Iterable[Row]) -> dict[tuple[str, str | None], list[Row]]:
    grouped: dict[tuple[str, str | None], list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["path"]):
        grouped[(row["subject"], row.get("session") or None)].append(row)
    return grouped


def _subject_inputs(
    subject: str,
    session: str | None,
    label: str,
    chosen: list[Row],
    phases: Mapping[tuple[str, ...], Row],
    t1ws: list[Row],
    echo_rule: str | int,
    choice: str | None,
) -> SubjectInputs:
    echoes = [r.get("echo", "") for r in chosen]
    if len(set(echoes)) < len(echoes) or ("" in echoes and len(echoes) > 1):
        names = ", ".join(Path(r["path"]).name for r in chosen)
        raise InputError(f"{len(chosen)} files for one scan: {names}", subject=label,
                         fix="narrow the pybids_inputs filters (e.g. suffix, extension) or remove the copy")
    echo = None
    if echoes != [""]:
        by_echo = {int(r["echo"]): r for r in chosen}
        times = {e: _echo_time(by_echo[e]["path"], label) for e in sorted(by_echo)}
        known = [(e, t) for e, t in times.items() if t is not None]
        for (_, before), (e, te) in zip(known, known[1:]):
            if te <= before:
                raise InputError(f"EchoTime {te} s of echo {e} is not later than the echo before ({before} s)",
                                 subject=label, path=by_echo[e]["path"],
                                 fix="check each echo's EchoTime against the echo- entity of its file name")
        echo = choose_echo(times, echo_rule, label=label)
        mag = by_echo[echo]
    else:
        mag = chosen[0]
    phase = phases.get(_key(mag))
    if phase:  # EchoTime: one number, or a list for a 4D echo stack
        mag_te, phase_te = (read_sidecar(r["path"], subject=label).get("EchoTime") for r in (mag, phase))
        if None not in (mag_te, phase_te) and not _same_times(mag_te, phase_te):
            raise InputError(f"EchoTime {phase_te} s differs from the magnitude's {mag_te} s", subject=label,
                             path=phase["path"], fix="pair magnitude and phase of the same echo (check both sidecars)")
    notes = [choice] if choice else []
    if len(t1ws) > 1:
        notes.append(f"{len(t1ws)} T1w images: using {Path(t1ws[-1]['path']).name} (the last by name)")
    return SubjectInputs(
        subject=subject,
        session=session,
        mag=Path(mag["path"]),
        phase=Path(phase["path"]) if phase else None,
        t1w=Path(t1ws[-1]["path"]) if t1ws else None,
        echo=echo,
        choice="; ".join(notes) or None,
    )


def _key(row: Row) -> tuple[str, ...]:
    return tuple(row.get(k) or "" for k in ("subject", "session", *_SCAN_ENTITIES, "echo"))


def _same_times(a: object, b: object) -> bool:
    try:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=1e-6))


def _echo_time(path: str, label: str) -> float | None:
    te = read_sidecar(path, subject=label).get("EchoTime")
    if te is None:
        return None
    if isinstance(te, bool) or not isinstance(te, (int, float)):
        raise InputError(f"EchoTime {te!r} in its sidecar is not a number", subject=label, path=path,
                         fix="give EchoTime in seconds (e.g. 0.02) in the JSON sidecar")
    return float(te)
