"""The one exit-code table of every ``python -m mnist_mlops.<entry>``.

Schedulers (cron, DVC, the retrain watcher, CI) branch on these numbers, so each one means the
same thing in every entrypoint. The table is repeated in the README; ``tests/test_entrypoints.py``
checks that both agree.

This module imports only the standard library and OmegaConf: entrypoints import it before
Hydra has read argv, and ``--help`` must not pay for torch, MLflow or Spark.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum

from omegaconf.errors import OmegaConfBaseException


class ExitCode(IntEnum):
    """What a finished entrypoint process reports. A signal N ends it with 128 + N."""

    OK = 0  # done, including "nothing to do" and "not promoted"
    FAILED = 1  # failed, or refused a bad value: one line on stderr names it (or a traceback)
    DRIFT_WARN = 10  # drift: a warning, no action needed yet
    DRIFT_ALERT = 20  # drift: an alert (and a marker for retraining)
    NOT_ENOUGH_DATA = 30  # drift: the window is too small to decide
    LOCKED = 75  # retrain: another retrain holds the lock (EX_TEMPFAIL: try again later)


# Errors that mean "a value the user gave is wrong" (a config key, a path, a run id): these end
# the process with one line naming it. Anything else is a bug and keeps Hydra's traceback.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    LookupError,
    FileNotFoundError,
    NotADirectoryError,
    OmegaConfBaseException,
)
FULL_ERROR_ENV_VAR = "HYDRA_FULL_ERROR"  # Hydra's own switch: =1 shows every traceback


def one_line(err: BaseException) -> str:
    """The error's own message on one line (Hydra's instantiate wrapper unwrapped)."""
    cause = err.__cause__ if type(err).__name__ == "InstantiationException" else None
    text = str(cause or err).strip() or type(err).__name__
    return " ".join(text.split())


def is_bad_input(err: BaseException) -> bool:
    """Whether ``err`` (or the constructor error Hydra wrapped) is one of ``BAD_INPUT_ERRORS``."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    return isinstance(err, BAD_INPUT_ERRORS)


@contextmanager
def bad_input_exits(entry: str, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a bad-input error into ``<entry>: <message>`` on stderr and exit ``FAILED``.

    ``extra``: further error types that mean bad input for this entry (e.g. a missing raw
    file). With ``HYDRA_FULL_ERROR=1`` the error propagates with its traceback, as Hydra does.
    """
    try:
        yield
    except Exception as err:
        if os.environ.get(FULL_ERROR_ENV_VAR) == "1":
            raise
        if not (is_bad_input(err) or isinstance(err, extra)):
            raise
        print(f"{entry}: {one_line(err)}", file=sys.stderr)
        raise SystemExit(int(ExitCode.FAILED)) from err


def exit_with(code: int | ExitCode) -> None:
    """End the process with a code from the table (``sys.exit`` with the plain int)."""
    sys.exit(int(code))


def run_entry(entry: str, job: Callable[[], int | ExitCode | None]) -> None:
    """Run ``job`` under :func:`bad_input_exits` and exit with the code it returns (None: OK)."""
    with bad_input_exits(entry):
        code = job()
    exit_with(ExitCode.OK if code is None else code)
