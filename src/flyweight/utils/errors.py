"""Expected user errors end a command with their message, not a page of traceback.

A wrong config value, a missing file or a bad layer argument raises ``ValueError`` / ``TypeError`` /
``FileNotFoundError`` whose message already names the key, the value and the fix; the stack under it
only hides that line. ``user_errors_reported()`` prints ``flyweight: error: <message>`` and where it
was raised, and exits with status 2 (the usual exit status for bad usage).
``FLYWEIGHT_TRACEBACK=1`` re-raises instead, for debugging.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from flyweight.utils.env import env_flag



class UserFacingError(Exception):
    """An error whose message is the whole story (e.g. training diverged: the step, the checkpoint, the
    likely cause) although it is not a bad value; printed like the others."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, NotADirectoryError,
                                                 UserFacingError)
USAGE_EXIT_STATUS = 2


def _raised_at(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    where = last.filename if last.filename.startswith("<") else os.path.relpath(last.filename)
    return f"{where}:{last.lineno}"


@contextmanager
def user_errors_reported(stream=None) -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as err:
        try:
            whole_traceback = env_flag("FLYWEIGHT_TRACEBACK")
        except ValueError:  # a value that is not a flag still asks for the traceback, not a second error
            whole_traceback = True
        if whole_traceback:
            raise
        stream = sys.stderr if stream is None else stream
        print(f"flyweight: error: {err}\n  ({type(err).__name__} raised at {_raised_at(err)}; "
              "FLYWEIGHT_TRACEBACK=1 shows the whole traceback)", file=stream, flush=True)
        raise SystemExit(USAGE_EXIT_STATUS) from None
