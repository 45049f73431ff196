"""Running one library function as a Snakemake job: logging, and bad input as one clear line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from cmbflow.errors import InputError


def run_step(snakemake: Any, func: Callable[..., object], **kwargs: Any) -> None:
    """Call ``func(**kwargs)`` with logging into the rule's log file.

    An :class:`InputError` ends the job with its one-line message in the log and on stderr (so
    ``--keep-going`` moves on to other subjects and the message is easy to find); other errors
    keep their traceback because they are bugs, not bad data.
    """
    if "torch" in sys.modules:  # stay within the job's CPU allocation
        sys.modules["torch"].set_num_threads(snakemake.threads)
    logging.basicConfig(
        filename=snakemake.log[0],
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        func(**kwargs)
    except InputError as err:
        logging.error("%s", err)
        print(f"cmbflow error: {err}", file=sys.stderr)
        sys.exit(1)
