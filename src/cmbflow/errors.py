"""One error type for bad input, rendered as one line that names subject and file."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data or configuration.

    ``str(err)`` is a single line: ``sub-01: /data/sub-01/anat/x.nii.gz: what is wrong; what to do``.
    """

    def __init__(
        self,
        problem: str,
        *,
        subject: str | None = None,
        path: str | Path | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.subject = subject
        self.path = None if path is None else str(path)
        self.fix = fix
        parts = [p for p in (subject, self.path) if p]
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(f"{p}:" for p in parts) + (" " if parts else "") + message)
