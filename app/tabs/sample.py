"""Sample tab: draw images from the model with a chosen solver, tolerance or step count, and alpha."""
import gradio as gr
import torch

from lsgm_core import solvers

from ..common import QUICK, Context, integer, number, one_of, try_load, user_errors
from ..images import grid

MAX_SAMPLES = 64
MAX_STEPS = 2000
SOLVER_CHOICES = [("fast (exponential integrator, fixed steps)", "fast"),
                  ("ode (adaptive RK45, set by tolerance)", "ode"),
                  ("sde (reverse SDE, Euler-Maruyama, fixed steps)", "sde")]
STEPS_INFO = "fast: 10-50 steps are plenty; the SDE needs hundreds; one network evaluation per step"
# Steps the tab starts with: 10 fast steps differ from 50 by under 1% of the pixel range on the
# binarized-MNIST model, at half the engine's default cost: a click stays under a second on a laptop.
STEPS = {"fast": 10, "sde": solvers.DEFAULT_STEPS["sde"]}
# The tab as it opens, in the order of the /sample endpoint's arguments after the model (app.bench uses it).
DEFAULTS = {"num": 16, "seed": 0, "temperature": 1.0, "solver": "fast", "log_atol": -5, "log_rtol": -5,
            "steps": STEPS["fast"], "override": False, "alpha": 1.0}


def alpha_summary(model) -> str:
    """The learned mixing coefficients in words, for the alpha control's help text."""
    if model.kind != "lsgm" or not model.prior.mixed:
        return "this model has no mixed prior (the network alone is the score)"
    a = model.prior.alpha().detach().cpu()
    return (f"learned per channel: mean {a.mean():.3f}, from {a.min():.3f} to {a.max():.3f}; "
            "0 = pure N(0, I) prior, 1 = the network alone")


def solver_args(solver: str, log_atol, log_rtol, steps) -> dict:
    """Checked keyword arguments of solvers.sample for a solver choice (shared with Trajectory)."""
    one_of("solver", solver, solvers.SOLVERS)
    if solver == "ode":
        return {"atol": 10 ** number("log10 atol", log_atol, -8, -1),
                "rtol": 10 ** number("log10 rtol", log_rtol, -8, -1)}
    return {"steps": integer("steps", steps, 1, MAX_STEPS)}


def progress_callback(progress: gr.Progress, check):
    """A solver callback that reports progress and ends the job when the user pressed Stop."""
    def report(d: dict) -> None:
        check()
        progress(min(1.0, d["done"]), desc=f"t = {d['t']:.3f}, {d['nfe']} network evaluations")
    return report


def solver_controls(tab: str, default_solver: str, default_tol: float):
    """Solver, tolerance and step controls (shared with Trajectory); the step slider follows the solver."""
    solver = gr.Radio(SOLVER_CHOICES, value=default_solver, label="Solver", elem_id=f"{tab}-solver")
    with gr.Row():
        ode = default_solver == "ode"
        log_atol = gr.Slider(-8, -1, value=default_tol, step=0.5, label="log10 atol", visible=ode,
                             info="absolute tolerance 10^x of the adaptive solver: lower is more accurate and slower")
        log_rtol = gr.Slider(-8, -1, value=default_tol, step=0.5, label="log10 rtol", visible=ode,
                             info="relative tolerance 10^x")
        steps = gr.Slider(1, MAX_STEPS, value=STEPS.get(default_solver, STEPS["fast"]), step=1,
                          label="Steps", info=STEPS_INFO, visible=not ode,
                          elem_id=f"{tab}-steps")

    def show_relevant(s):
        """Tolerances for the adaptive solver, a step count (reset to the solver's default) for the others."""
        ode = s == "ode"
        return (gr.update(visible=ode), gr.update(visible=ode),
                gr.update(visible=not ode, value=STEPS.get(s, STEPS["fast"])))

    solver.change(show_relevant, solver, [log_atol, log_rtol, steps], api_visibility="private", queue=False)
    return solver, log_atol, log_rtol, steps


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    with gr.Row():
        num = gr.Slider(1, MAX_SAMPLES, value=DEFAULTS["num"], step=1, label="Number of samples",
                        elem_id="sample-num")
        seed = gr.Number(DEFAULTS["seed"], precision=0, minimum=0, label="Seed",
                         info="the same seed gives the same images")
        temperature = gr.Slider(0, 1.5, value=DEFAULTS["temperature"], step=0.05, label="Temperature",
                                info="scale of the starting noise z1; below 1 gives cleaner, less varied images")
    solver, log_atol, log_rtol, steps = solver_controls("sample", DEFAULTS["solver"], DEFAULTS["log_atol"])
    with gr.Row():
        override = gr.Checkbox(DEFAULTS["override"], label="Override the learned alpha", scale=1)
        alpha = gr.Slider(0, 1, value=DEFAULTS["alpha"], step=0.01, label="alpha (all channels)", scale=3,
                          info="0 = pure N(0, I) prior")
    with gr.Row():
        go = gr.Button("Sample", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="sample-stats")
    with gr.Row():
        image = gr.Image(label="Samples", type="filepath", format="png", interactive=False, elem_id="sample-grid")
    download = gr.DownloadButton("Download PNG")

    @user_errors
    def run(model_id, num, seed, temperature, solver, log_atol, log_rtol, steps, override, alpha,
            request: gr.Request, progress=gr.Progress()):
        n = integer("number of samples", num, 1, MAX_SAMPLES)
        kwargs = solver_args(solver, log_atol, log_rtol, steps)
        model = ctx.registry.load(model_id)
        with torch.inference_mode():
            result = solvers.sample(
                model, n, solver, **kwargs, seed=integer("seed", seed, 0, 2**31 - 1),
                temperature=number("temperature", temperature, 0, 1.5),
                alpha=number("alpha", alpha, 0, 1) if override else None,
                callback=progress_callback(progress, ctx.cancellations.checker(request)))
        path = ctx.outputs.png(grid(result.images), "samples")
        setting = (f"atol 1e{float(log_atol):g}, rtol 1e{float(log_rtol):g}" if solver == "ode"
                   else f"{kwargs['steps']} steps")
        text = (f"**{n} samples** · solver **{solver}** ({setting}) · **NFE {result.nfe}** · "
                f"**{result.seconds:.2f} s** · alpha {'%.2f' % float(alpha) if override else 'learned'}")
        return path, path, text

    event = go.click(run, [picker, num, seed, temperature, solver, log_atol, log_rtol, steps, override, alpha],
                     [image, download, stats], api_name="sample", **QUICK)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)

    def on_model(model_id):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip(), gr.skip()
        mixed = model.kind == "lsgm" and model.prior.mixed
        learned = float(model.prior.alpha().detach().mean()) if mixed else 1.0
        return (gr.update(info=alpha_summary(model), interactive=mixed, value=round(learned, 2)),
                gr.update(interactive=mixed))

    gr.on([picker.change, demo.load], on_model, picker, [alpha, override], api_visibility="private")
