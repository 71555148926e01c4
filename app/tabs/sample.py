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
# The alpha control scales the learned per-channel alpha: 0 is the pure N(0, I) prior, 1 the
# model as trained, and beyond 1 exaggerates the network's learned correction to the Gaussian
# (eps_hat = sigma_t z_t + alpha net). One absolute alpha for all channels could not show "the
# learned alpha", which differs from channel to channel.
ALPHA_SCALE_MAX = 2.0
# The tab as it opens, in the order of the /sample endpoint's arguments after the model (app.bench uses it).
DEFAULTS = {"num": 16, "seed": 0, "temperature": 1.0, "solver": "fast", "log_atol": -5, "log_rtol": -5,
            "steps": STEPS["fast"], "alpha_scale": 1.0}


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


def scaled_alpha(model, scale: float):
    """The solvers' `alpha` for a multiple of the learned one: None (the learned alpha itself) at 1
    or where the model has no mixed prior, else scale × the learned alpha per channel."""
    if scale == 1.0 or not is_mixed(model):
        return None
    return scale * model.prior.alpha().detach()


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
    alpha = gr.Slider(0, ALPHA_SCALE_MAX, value=DEFAULTS["alpha_scale"], step=0.05, elem_id="sample-alpha",
                      label="alpha, as a multiple of the learned alpha", info="0 = pure N(0, I) prior, 1 = as trained")
    with gr.Row():
        go = gr.Button("Sample", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="sample-stats")
    with gr.Row():
        image = gr.Image(label="Samples", type="filepath", format="png", interactive=False, elem_id="sample-grid")
    download = gr.DownloadButton("Download PNG")

    @user_errors
    def run(model_id, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha_scale,
            request: gr.Request, progress=gr.Progress()):
        n = integer("number of samples", num, 1, MAX_SAMPLES)
        kwargs = solver_args(solver, log_atol, log_rtol, steps)
        scale = number("alpha scale", alpha_scale, 0, ALPHA_SCALE_MAX)
        model = ctx.registry.load(model_id)
        with torch.inference_mode():
            result = solvers.sample(
                model, n, solver, **kwargs, seed=integer("seed", seed, 0, 2**31 - 1),
                temperature=number("temperature", temperature, 0, 1.5), alpha=scaled_alpha(model, scale),
                callback=progress_callback(progress, ctx.cancellations.checker(request)))
        path = ctx.outputs.png(grid(result.images), "samples")
        setting = (f"atol 1e{float(log_atol):g}, rtol 1e{float(log_rtol):g}" if solver == "ode"
                   else f"{kwargs['steps']} steps")
        text = (f"**{n} samples** · solver **{solver}** ({setting}) · **NFE {result.nfe}** · "
                f"**{result.seconds:.2f} s** · "
                + (f"alpha {scale:g} × learned" if is_mixed(model) else "no mixed prior"))
        return path, path, text

    event = go.click(run, [picker, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha],
                     [image, download, stats], api_name="sample", **QUICK)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)

    def on_model(model_id):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip()
        if is_mixed(model):
            return gr.update(info=alpha_summary(model), interactive=True)
        return gr.update(info=alpha_summary(model), interactive=False, value=1.0)

    gr.on([picker.change, demo.load], on_model, picker, alpha, api_visibility="private")
