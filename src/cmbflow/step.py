"""Running one library function as a Snakemake job: logging, a memory check, and bad input as one clear line."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from cmbflow.errors import InputError
from cmbflow.memory import check_memory


def run_step(snakemake: Any, func: Callable[..., object], **kwargs: Any) -> None:
    """Call ``func(**kwargs)`` with logging into the rule's log file.

    First, a job whose image would need more memory than the rule's ``mem_mb`` stops before
    loading it (:func:`cmbflow.memory.check_memory`). An :class:`InputError` ends the job with its
    one-line message in the log and on stderr (so ``--keep-going`` moves on to other subjects and
    the message is easy to find); other errors are bugs, not bad data: their traceback goes to the
    log and stderr. The first ERROR line of a log is the subject's status in the partial cohort
    table (cmbflow.cohort).
    """
    # Stay within the job's CPU allocation: torch (imported by the steps that use it) and the
    # BLAS/OpenMP pools read these when they start.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(snakemake.threads)
    logging.basicConfig(
        filename=snakemake.log[0],
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    image = snakemake.input.get("mag") or snakemake.input.get("image")
    try:
        if image:
            check_memory(snakemake.rule, image, snakemake.resources.mem_mb, label=kwargs.get("label"))
        start = time.perf_counter()
        func(**kwargs)
        # What the job spent before this (Python, imports) is its start-up (benchmarks/bench_throughput.py).
        logging.info("%s ran in %.2f s", func.__name__, time.perf_counter() - start)
    except InputError as err:
        logging.error("%s", err)
        # One write, newline included: print() writes the newline separately, and Snakemake's own
        # output on the shared stderr could land between the two.
        sys.stderr.write(f"cmbflow error: {err}\n")
        sys.stderr.flush()
        sys.exit(1)
    except Exception as err:
        logging.exception("internal error (a bug; please report it with this log): %s: %s",
                          type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        raise
