"""What every tab shares: the app's context, turning failures into readable messages, argument checks."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from lsgm_core import CheckpointError, ConfigError, DataError
from lsgm_core.atomic import DiskFullError
from lsgm_core.solvers import SOLVERS

from .images import Outputs
from .models import Registry

log = logging.getLogger("app")

# Concurrency groups, as event keyword arguments: quick requests (sampling, interpolation) never
# wait behind slow ones (trajectories, latent maps), so one user's long job does not block the
# others' small ones; each group runs its stated number of requests at once, the rest queue.
QUICK = {"concurrency_id": "quick", "concurrency_limit": 2}
SLOW = {"concurrency_id": "slow", "concurrency_limit": 1}
# Live redraws (Sample's Live grid, Explore): only the newest state matters, so the page sends at
# most one request while one runs (always_last), and the reply skips the queue's SSE round trip.
LIVE = {"trigger_mode": "always_last", "queue": False}


class Cancelled(Exception):
    """The user pressed Stop while this request was running."""


class Cancellations:
    """Stop buttons. The Stop click notes the time for its browser session; a running job of
    that session polls `check` from its progress callback and ends at the next step, so the
    CPU is freed at once rather than when the abandoned job would have finished."""

    def __init__(self):
        self._stopped_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def request(self, request: gr.Request | None) -> None:
        if request is not None and request.session_hash:
            with self._lock:
                self._stopped_at[request.session_hash] = time.monotonic()

    def checker(self, request: gr.Request | None):
        """A function that raises Cancelled once Stop is pressed after this moment."""
        key = request.session_hash if request is not None else None
        start = time.monotonic()

        def check() -> None:
            if key is not None and self._stopped_at.get(key, -math.inf) > start:
                raise Cancelled()

        return check


@dataclass
class Context:
    registry: Registry
    outputs: Outputs
    data_dir: Path | None
    device: str
    cancellations: Cancellations = field(default_factory=Cancellations)
    services: dict = field(default_factory=dict)  # long-lived helpers by name (training runs, UMAP cache)
    runtime: str = "torch"  # lsgm_core.runtime's, for the solvers that take one (python -m app --runtime)

    def runtime_for(self, solver: str) -> str:
        """The runtime a solver's networks run on here: the app's where the solver takes it, else torch."""
        return self.runtime if self.runtime in SOLVERS[solver].runtimes else "torch"


def user_errors(fn):
    """Run an event handler; any failure reaches the user as a gr.Error message, never a traceback.
    A generator handler (one that shows a first result, then the whole) is wrapped as a generator."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with _as_user_errors(fn.__name__):
                yield from fn(*args, **kwargs)
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _as_user_errors(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _as_user_errors(name: str):
    try:
        yield
    except gr.Error:
        raise
    except Cancelled:
        log.info("%s stopped by the user", name)
        raise gr.Error("Stopped.") from None
    except (ValueError, CheckpointError, DataError, ConfigError, DiskFullError) as e:
        raise gr.Error(str(e)) from None
    except torch.OutOfMemoryError:
        raise gr.Error("out of memory: ask for fewer images at a time") from None
    except Exception as e:  # a bug: the user gets a message, the log gets the traceback
        log.exception("unexpected error in %s", name)
        raise gr.Error(f"internal error ({type(e).__name__}: {e}); details are in the app's log") from None


def try_load(ctx: Context, model_id):
    """The model, or None where it cannot be loaded (the model picker reports why)."""
    try:
        return ctx.registry.load(model_id)
    except (ValueError, CheckpointError):
        return None


def integer(name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi], else a ValueError naming the control."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not as_float.is_integer() or not lo <= as_float <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(as_float)


def number(name: str, value, lo: float, hi: float) -> float:
    """`value` as a finite float in [lo, hi], else a ValueError naming the control."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(as_float) or not lo <= as_float <= hi:
        raise ValueError(f"{name} must be from {lo:g} to {hi:g}, got {value!r}")
    return as_float


def one_of(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value
