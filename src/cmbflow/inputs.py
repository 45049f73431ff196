"""From the BIDS files snakebids found to one set of inputs per subject/session.

snakebids matches files against the config's filters; this module picks the echo (MEGRE), pairs
the phase with its magnitude, and attaches an optional T1w. It runs when the workflow starts, so
it only reads sidecars, never images. A subject whose files contradict each other (echo times, a
sidecar that is not JSON) gets its one-line error as ``problem`` instead of stopping the cohort:
its first job reports it, and ``--keep-going`` finishes the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmbflow.errors import InputError
from cmbflow.image import read_sidecar
from cmbflow.phase import select_echo

log = logging.getLogger(__name__)

#: Entities that identify one acquisition of one subject/session.
_ACQ_KEYS = ("acquisition", "run")


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

    @property
    def wildcards(self) -> dict[str, str]:
        return {"subject": self.subject} | ({"session": self.session} if self.session else {})

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


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


def collect_subject_inputs(
    components: Mapping[str, Iterable[Mapping[str, str]]],
    echo_rule: str | int,
) -> list[SubjectInputs]:
    """Group matched files (dicts of entities plus ``path``) into one entry per subject/session.

    ``components`` maps component names (see :data:`cmbflow.config.COMPONENTS`) to their rows;
    single- and multi-echo magnitudes are pooled, and a phase is paired with the magnitude of the
    same entities.
    When a subject has several runs or acquisitions, the last one (sorted by entities) is used and
    a warning logged: one scan per session is what a microbleed count refers to.
    """
    by_session: dict[tuple[str, str | None], list[Mapping[str, str]]] = defaultdict(list)
    for row in [*components.get("mag", []), *components.get("megre_mag", [])]:
        by_session[(row["subject"], row.get("session") or None)].append(row)
    phases = {_key(r): r for r in [*components.get("phase", []), *components.get("megre_phase", [])]}
    t1ws: dict[tuple[str, str | None], list[Mapping[str, str]]] = defaultdict(list)
    for row in components.get("t1w", []):
        t1ws[(row["subject"], row.get("session") or None)].append(row)

    subjects = []
    for (subject, session), rows in sorted(by_session.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        acquisitions = sorted({tuple(r.get(k, "") for k in _ACQ_KEYS) for r in rows})
        if len(acquisitions) > 1:
            log.warning("%s: %d magnitude acquisitions %s; using the last", label, len(acquisitions), acquisitions)
        chosen = [r for r in rows if tuple(r.get(k, "") for k in _ACQ_KEYS) == acquisitions[-1]]
        try:
            subjects.append(_subject_inputs(subject, session, label, chosen, phases, t1ws, echo_rule))
        except InputError as err:
            log.warning("%s", err)
            subjects.append(SubjectInputs(subject, session, Path(chosen[-1]["path"]), None, None, None, str(err)))
    return subjects


def _subject_inputs(
    subject: str,
    session: str | None,
    label: str,
    chosen: list[Mapping[str, str]],
    phases: Mapping[tuple[str, ...], Mapping[str, str]],
    t1ws: Mapping[tuple[str, str | None], list[Mapping[str, str]]],
    echo_rule: str | int,
) -> SubjectInputs:
    echo = None
    if len(chosen) > 1 or chosen[0].get("echo"):
        by_echo = {int(r["echo"]): r for r in sorted(chosen, key=lambda r: int(r["echo"]))}
        times = {e: _echo_time(r["path"], label) for e, r in by_echo.items()}
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
    t1w = sorted(t1ws.get((subject, session), []), key=lambda r: r["path"])
    return SubjectInputs(
        subject=subject,
        session=session,
        mag=Path(mag["path"]),
        phase=Path(phase["path"]) if phase else None,
        t1w=Path(t1w[-1]["path"]) if t1w else None,
        echo=echo,
    )


def _key(row: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(row.get(k) or "" for k in ("subject", "session", *_ACQ_KEYS, "echo"))


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
