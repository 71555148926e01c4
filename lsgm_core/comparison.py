"""A model against a baseline at the same solver settings and seed: both samples, and how many times faster.

`compare` draws from each model with `solvers.sample` and the same seed (so each draws its z1, of
its own shape, from that seed exactly as `sample(model, num, seed=seed)` does: the result is
reproducible and each side equals a plain sample of its model), and `speedup` gives baseline / model
in wall time and in network evaluations, the ratios `bench sampling --baseline` reports too.
`equal_fid` compares the two at equal quality: the cheapest solver setting of each that reaches a
FID both reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .solvers import SampleResult, check_model_for, sample, solver_options

# the model's time below which a wall-time ratio means nothing (a timer's resolution, not a speed-up)
MIN_SECONDS = 1e-4
SIDES = ("model", "baseline")


def speedup(model_seconds: float, model_nfe: int, baseline_seconds: float, baseline_nfe: int) -> dict[str, float]:
    """How many times faster the model is than the baseline (> 1: the model is faster), in wall time and in NFE."""
    return {"seconds": baseline_seconds / max(model_seconds, MIN_SECONDS), "nfe": baseline_nfe / model_nfe}


def equal_fid(model_runs: dict[str, dict], baseline_runs: dict[str, dict]) -> dict:
    """The two models at equal quality, from measured runs ({setting: {"seconds", "nfe", "fid"}} each).

    The level is the worse of the two best FIDs (the best FID both reach); for each model the
    fastest setting whose FID is at most that level, and speedup() of the two. Only measured
    points are used: nothing is interpolated between solver settings.
    """
    if not model_runs or not baseline_runs:
        raise ValueError("equal_fid needs at least one measured run of each model")
    level = max(min(r["fid"] for r in model_runs.values()), min(r["fid"] for r in baseline_runs.values()))
    chosen = {}
    for side, runs in zip(SIDES, (model_runs, baseline_runs)):
        setting = min((s for s, r in runs.items() if r["fid"] <= level), key=lambda s: runs[s]["seconds"])
        chosen[side] = {"run": setting, **{k: runs[setting][k] for k in ("fid", "nfe", "seconds")}}
    m, b = chosen["model"], chosen["baseline"]
    return {"fid": level, **chosen, "speedup": speedup(m["seconds"], m["nfe"], b["seconds"], b["nfe"])}


@dataclass
class Comparison:
    model: SampleResult
    baseline: SampleResult
    speedup: dict[str, float]  # speedup() of the two results


def compare(model, baseline, num: int, solver: str = "fast", *, steps: int | None = None, atol: float | None = None,
            rtol: float | None = None, temperature: float = 1.0, seed: int | None = 0,
            callback: Callable[[dict], None] | None = None) -> Comparison:
    """`num` samples of `model`, then of `baseline`, each by `sample` with the same solver settings and seed.

    `callback` receives sample()'s progress dicts with "side" ("model" or "baseline") added and
    "done" running from 0 to 1 over both; raising from it aborts. An error that belongs to one
    model (a solver it cannot run, such as `distilled` without a student) names that side.
    """
    solver_options(solver, steps, atol, rtol)  # the shared settings, refused once and before any work
    for side, m in zip(SIDES, (model, baseline)):
        try:
            check_model_for(m, solver)
        except ValueError as e:
            raise ValueError(f"the {side}: {e}") from None
    results = []
    for i, (side, m) in enumerate(zip(SIDES, (model, baseline))):
        report = None
        if callback is not None:
            report = lambda d, i=i, side=side: callback({**d, "side": side, "done": (i + d["done"]) / 2})  # noqa: E731
        try:
            results.append(sample(m, num, solver, steps=steps, atol=atol, rtol=rtol, temperature=temperature,
                                  seed=seed, callback=report))
        except ValueError as e:
            raise ValueError(f"the {side}: {e}") from None
    first, second = results
    return Comparison(first, second, speedup(first.seconds, first.nfe, second.seconds, second.nfe))
