"""What every lsgm_core CLI does with its outcome: one JSON line on stdout, or a one-line error."""
from __future__ import annotations

import json
import sys
from typing import Callable

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError

# errors that a user can act on: bad arguments, files or data (a traceback would only hide them)
USER_ERRORS = (CheckpointError, ConfigError, DataError, ValueError, OSError)


def report(job: Callable[[], dict | None], more_errors: tuple = ()) -> int:
    """Run `job`: print the dict it returns as one JSON line (nothing for None) and return 0, or
    print "error: ..." on stderr and return 2."""
    try:
        result = job()
    except USER_ERRORS + more_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0
