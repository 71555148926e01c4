"""TensorBoard event files beside log.jsonl, with the same scalars, where the optional ``tensorboard``
package is installed (``torch.utils.tensorboard`` needs it); without it training goes on as before
and says once per process that this log is off."""
from __future__ import annotations

import sys
from numbers import Real
from pathlib import Path

__all__ = ["EventLog"]

_said_off = False


class EventLog:
    """A context manager that writes each logged line's numbers as scalars at its step.

    ``start_step`` > 0 (a resumed run) makes TensorBoard drop the earlier events from that step on,
    which a killed run may have written past its last checkpoint, as --resume drops them from
    log.jsonl.
    """

    def __init__(self, folder: str | Path, start_step: int = 0):
        global _said_off
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
            if not _said_off:
                print("TensorBoard event files are off: the tensorboard package is not installed "
                      "(pip install tensorboard to get them; log.jsonl is written as always).", file=sys.stderr)
                _said_off = True
            return
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step or None)

    def write(self, line: dict) -> None:
        """The numbers of one log.jsonl line (``step`` is the x axis; text such as "skipped" is left out)."""
        if self.writer is None:
            return
        for key, value in line.items():
            if key != "step" and isinstance(value, Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, line["step"])

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
