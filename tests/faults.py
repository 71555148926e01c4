"""Fault injection for the reliability tests: planned SIGKILLs in the trainer and inside checkpoint
saves, and hostile files that run code if anything unpickles them.

Run as a script, it is the training CLI (lsgm_core.train.main, unchanged) with one planned SIGKILL,
chosen by the environment variable LSGM_KILL:

    LSGM_KILL=step:7 python tests/faults.py --config ... --out ...     dies after step 7's update
    LSGM_KILL=save:2:5 python tests/faults.py --config ... --out ...   dies at moment 5 of the 2nd save

and it writes "resumed at step N" to stderr when --resume found a checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import sys
from pathlib import Path

from lsgm_core import atomic, checkpoint


def die() -> None:
    """SIGKILL this process: no handler, no `finally`, no flush runs, as when the OOM killer strikes."""
    os.kill(os.getpid(), signal.SIGKILL)


class SaveKiller:
    """Numbers the moments of a checkpoint save and SIGKILLs the process at moment `target`.

    The moments are: before every file-system step of a save through lsgm_core.checkpoint and
    lsgm_core.atomic (folder created, each file written, fsync, rename, `latest` replaced, old
    checkpoints pruned), halfway through writing each file (the file is cut to half its size before
    the kill, as a kill mid-write leaves it), and the end of the save. With target None nothing dies
    and `moments` counts them.
    """

    def __init__(self, target: int | None = None):
        self.target = target
        self.moments = 0
        self.active = False

    def moment(self, cut: Path | None = None) -> None:
        if not self.active:
            return
        if self.moments == self.target:
            if cut is not None:
                os.truncate(cut, os.path.getsize(cut) // 2)
            die()
        self.moments += 1

    def install(self, setattr) -> SaveKiller:
        """Wrap the file-system steps; `setattr` is monkeypatch.setattr (or the builtin one in a
        process that is going to die anyway)."""

        def step(fn):
            def wrapped(*args, **kwargs):
                self.moment()
                return fn(*args, **kwargs)
            return wrapped

        def writer(atomic_write):
            def wrapped(path, write, *args, **kwargs):
                def write_in_moments(tmp):
                    self.moment()
                    write(tmp)
                    self.moment(cut=Path(tmp))
                return atomic_write(path, write_in_moments, *args, **kwargs)
            return wrapped

        setattr(atomic, "atomic_write", writer(atomic.atomic_write))
        setattr(atomic, "fsync_dir", step(atomic.fsync_dir))
        for module, name in [(checkpoint.os, "rename"), (checkpoint.os, "replace"), (checkpoint.shutil, "rmtree"),
                             (checkpoint.Path, "mkdir"), (checkpoint.Path, "write_text")]:
            setattr(module, name, step(getattr(module, name)))
        return self

    def run(self, save, *args, **kwargs):
        """Call `save` with the moments counted (and the kill armed) inside it only."""
        self.active = True
        try:
            result = save(*args, **kwargs)
            self.moment()  # the save has returned
            return result
        finally:
            self.active = False


# --------------------------------------------------------------------------- hostile files

class Payload:
    """Unpickling this object calls open(marker, "w"): the marker file appearing proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps(Payload(marker), protocol=protocol)


def torch_payload(marker: Path) -> bytes:
    """A torch.save file (zip with data.pkl) holding the payload: the classic poisoned .pt/.bin."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": Payload(marker)}, buffer)
    return buffer.getvalue()


def rehash(ckpt: Path, name: str) -> None:
    """Record a replaced file's digest in meta.json, as if it had been saved that way."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------- the training CLI with a kill

def _plan_kill(train, plan: str) -> None:
    kind, *numbers = plan.split(":")
    numbers = [int(n) for n in numbers]
    if kind == "step":
        train_step = train.Trainer.train_step

        def step_then_die(self):
            stats = train_step(self)
            if self.step == numbers[0]:  # the update of this step is done, not yet logged or saved
                die()
            return stats

        train.Trainer.train_step = step_then_die
    elif kind == "save":
        killer = SaveKiller(numbers[1]).install(setattr)
        save = train.save_run_checkpoint
        calls = []

        def counted_save(*args, **kwargs):
            calls.append(None)
            return killer.run(save, *args, **kwargs) if len(calls) == numbers[0] else save(*args, **kwargs)

        train.save_run_checkpoint = counted_save
    else:
        raise SystemExit(f"LSGM_KILL must be step:N or save:N:MOMENT, got {plan!r}")


if __name__ == "__main__":
    from lsgm_core import train

    load_resume_state = train.Trainer._load_resume_state

    def report_resume(self):
        load_resume_state(self)
        print(f"resumed at step {self.step}", file=sys.stderr, flush=True)

    train.Trainer._load_resume_state = report_resume
    if os.environ.get("LSGM_KILL"):
        _plan_kill(train, os.environ["LSGM_KILL"])
    sys.exit(train.main())
