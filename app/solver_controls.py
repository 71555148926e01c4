"""The sampling controls tabs share: solver, steps or tolerances, temperature and alpha, with their checks.

The solver choices, their labels, their default steps and whether a solver shows a step count or
tolerances come from lsgm_core.solvers.SOLVERS: a solver registered there appears here as it is.
"""
import math

import gradio as gr

from lsgm_core.solvers import SOLVERS

from .common import integer, number, one_of, try_load

DEFAULT_SOLVER = "fast"
# Steps the default solver starts with: 10 fast steps differ from 50 by under 1% of the pixel range
# on the binarized-MNIST model, at half the engine's default cost: a click stays under a second on a laptop.
DEFAULT_SOLVER_STEPS = 10
MAX_STEPS = 2000
LOG_TOL_MIN, LOG_TOL_MAX = -8, -1
MAX_TEMPERATURE = 1.5
# The alpha control scales the learned per-channel alpha: 0 is the pure N(0, I) prior, 1 the
# model as trained, and beyond 1 exaggerates the network's learned correction to the Gaussian
# (eps_hat = sigma_t z_t + alpha net). One absolute alpha for all channels could not show "the
# learned alpha", which differs from channel to channel.
ALPHA_SCALE_MAX = 2.0


def by_tolerance(solver: str) -> bool:
    return SOLVERS[solver].controlled_by == "tolerance"


def choices() -> list[tuple[str, str]]:
    """(label, name) of every registered solver, for a gr.Radio: the default first, then the registry's order."""
    names = sorted(SOLVERS, key=lambda name: name != DEFAULT_SOLVER)
    return [(f"{name} ({SOLVERS[name].label}, {'set by tolerance' if by_tolerance(name) else 'fixed steps'})", name)
            for name in names]


def default_steps(solver: str) -> int:
    """The step count a solver starts with (a tolerance-set one keeps the default solver's)."""
    if solver == DEFAULT_SOLVER or by_tolerance(solver):
        return DEFAULT_SOLVER_STEPS
    return SOLVERS[solver].default_steps


def max_steps(solver: str) -> int:
    choices = SOLVERS[solver].steps_choices
    return max(choices) if choices else MAX_STEPS


def steps_info(solver: str) -> str:
    choices = SOLVERS[solver].steps_choices
    only = f" and takes only {', '.join(map(str, choices))}" if choices else ""
    return f"one network evaluation per step; {solver} starts at {default_steps(solver)}{only}"


def solver_args(solver: str, log_atol, log_rtol, steps) -> dict:
    """Checked keyword arguments of solvers.sample for a solver choice."""
    one_of("solver", solver, SOLVERS)
    if by_tolerance(solver):
        return {"atol": 10 ** number("log10 atol", log_atol, LOG_TOL_MIN, LOG_TOL_MAX),
                "rtol": 10 ** number("log10 rtol", log_rtol, LOG_TOL_MIN, LOG_TOL_MAX)}
    return {"steps": integer("steps", steps, 1, MAX_STEPS)}


def describe_args(kwargs: dict) -> str:
    """solver_args' result in words: "atol 1e-05, rtol 1e-05" or "10 steps"."""
    if "steps" in kwargs:
        return f"{kwargs['steps']} steps"
    return f"atol 1e{math.log10(kwargs['atol']):g}, rtol 1e{math.log10(kwargs['rtol']):g}"


def progress_callback(progress: gr.Progress, check):
    """A solver callback that reports progress and ends the job when the user pressed Stop; a "side"
    in the progress (the Compare tab's, the model sampled) leads the text."""
    def report(d: dict) -> None:
        check()
        side = f"{d['side']}: " if "side" in d else ""
        progress(min(1.0, d["done"]), desc=f"{side}t = {d['t']:.3f}, {d['nfe']} network evaluations")
    return report


def solver_controls(tab: str, default_solver: str, default_log_tol: float):
    """Solver, tolerance and step controls; the step slider follows the solver."""
    solver = gr.Radio(choices(), value=default_solver, label="Solver", elem_id=f"{tab}-solver")
    with gr.Row():
        tol = by_tolerance(default_solver)
        log_atol = gr.Slider(LOG_TOL_MIN, LOG_TOL_MAX, value=default_log_tol, step=0.5, label="log10 atol",
                             visible=tol,
                             info="absolute tolerance 10^x of the adaptive solver: lower is more accurate and slower")
        log_rtol = gr.Slider(LOG_TOL_MIN, LOG_TOL_MAX, value=default_log_tol, step=0.5, label="log10 rtol",
                             visible=tol, info="relative tolerance 10^x")
        steps = gr.Slider(1, max_steps(default_solver), value=default_steps(default_solver), step=1, label="Steps",
                          info=steps_info(default_solver), visible=not tol, elem_id=f"{tab}-steps")

    def show_relevant(s):
        """Tolerances for an adaptive solver, a step count (reset to the solver's default, up to the
        most it takes) for the others."""
        tol = by_tolerance(s)
        return (gr.update(visible=tol), gr.update(visible=tol),
                gr.update(visible=not tol, value=default_steps(s), info=steps_info(s), maximum=max_steps(s)))

    solver.change(show_relevant, solver, [log_atol, log_rtol, steps], api_visibility="private", queue=False)
    return solver, log_atol, log_rtol, steps


def temperature_control(default: float, elem_id: str | None = None) -> gr.Slider:
    return gr.Slider(0, MAX_TEMPERATURE, value=default, step=0.05, label="Temperature", elem_id=elem_id,
                     info="scale of the starting noise z1; below 1 gives cleaner, less varied images")


def checked_temperature(value) -> float:
    return number("temperature", value, 0, MAX_TEMPERATURE)


def is_mixed(model) -> bool:
    return model.kind == "lsgm" and model.prior.mixed


def alpha_summary(model) -> str:
    """The learned mixing coefficients of the active channels in words, for the alpha control's help text
    (inactive channels are fixed at 0 and would only drag a mean down)."""
    if not is_mixed(model):
        return "this model has no mixed prior (the network alone is the score): alpha does not apply"
    prior = model.prior
    a = prior.alpha().detach().cpu()[prior.active.cpu() > 0]
    c = prior.shape[0]
    if len(a) == 0:
        learned = f"no active latent channel of {c}: the prior is N(0, I) whatever alpha"
    elif len(a) <= 4:
        learned = f"learned alpha {', '.join(f'{v:.3f}' for v in a)} on {len(a)} active latent channels of {c}"
    else:
        learned = (f"learned alpha from {a.min():.3f} to {a.max():.3f} (mean {a.mean():.3f}) "
                   f"on {len(a)} active latent channels of {c}")
    return f"{learned}; × 0 = pure N(0, I) prior, × 1 = as trained, above 1 = the learned correction exaggerated"


def alpha_applies(model, solver: str) -> bool:
    """Whether the alpha control means anything: a mixed prior, and a solver that evaluates it (a
    distilled student learned the flow at the model's own alpha)."""
    return is_mixed(model) and SOLVERS[solver].takes_alpha


def scaled_alpha(model, scale: float, solver: str):
    """The solvers' `alpha` for a multiple of the learned one: None (the learned alpha itself) at 1
    or where alpha does not apply, else scale × the learned alpha per channel."""
    if scale == 1.0 or not alpha_applies(model, solver):
        return None
    return scale * model.prior.alpha().detach()


def checked_alpha_scale(value) -> float:
    return number("alpha scale", value, 0, ALPHA_SCALE_MAX)


def alpha_control(tab: str, default: float, ctx, picker: gr.Dropdown, demo: gr.Blocks,
                  solver: gr.Radio | None = None) -> gr.Slider:
    """The alpha slider; its help text follows the picked model, and it is greyed out where alpha does
    not apply (no mixed prior, or a `solver` choice that does not take it)."""
    alpha = gr.Slider(0, ALPHA_SCALE_MAX, value=default, step=0.05, elem_id=f"{tab}-alpha",
                      label="alpha, as a multiple of the learned alpha", info="0 = pure N(0, I) prior, 1 = as trained")

    def on_change(model_id, solver_name=DEFAULT_SOLVER):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip()
        if alpha_applies(model, solver_name):
            return gr.update(info=alpha_summary(model), interactive=True)
        if not is_mixed(model):
            return gr.update(info=alpha_summary(model), interactive=False, value=1.0)
        return gr.update(info=f"the {solver_name} solver learned the flow at the model's own alpha: alpha does "
                              "not apply", interactive=False)

    triggers = [picker.change, demo.load] + ([solver.change] if solver is not None else [])
    gr.on(triggers, on_change, [picker] + ([solver] if solver is not None else []), alpha, api_visibility="private")
    return alpha
