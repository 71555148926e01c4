"""Sample tab: draw images from the model with a chosen solver, tolerance or step count, and alpha."""
import gradio as gr
import torch

from lsgm_core import solvers

from ..common import QUICK, Context, integer, user_errors
from ..images import grid
from ..solver_controls import (DEFAULT_SOLVER, alpha_applies, alpha_control, checked_alpha_scale, checked_temperature,
                               default_steps, describe_args, is_mixed, progress_callback, scaled_alpha, solver_args,
                               solver_controls, temperature_control)

MAX_SAMPLES = 64
# The tab as it opens, in the order of the /sample endpoint's arguments after the model (app.bench uses it).
DEFAULTS = {"num": 16, "seed": 0, "temperature": 1.0, "solver": DEFAULT_SOLVER, "log_atol": -5, "log_rtol": -5,
            "steps": default_steps(DEFAULT_SOLVER), "alpha_scale": 1.0}


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    with gr.Row():
        num = gr.Slider(1, MAX_SAMPLES, value=DEFAULTS["num"], step=1, label="Number of samples",
                        elem_id="sample-num")
        seed = gr.Number(DEFAULTS["seed"], precision=0, minimum=0, label="Seed",
                         info="the same seed gives the same images")
        temperature = temperature_control(DEFAULTS["temperature"])
    solver, log_atol, log_rtol, steps = solver_controls("sample", DEFAULTS["solver"], DEFAULTS["log_atol"])
    alpha = alpha_control("sample", DEFAULTS["alpha_scale"], ctx, picker, demo, solver)
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
        scale = checked_alpha_scale(alpha_scale)
        model = ctx.registry.load(model_id)
        with torch.inference_mode():
            result = solvers.sample(
                model, n, solver, **kwargs, seed=integer("seed", seed, 0, 2**31 - 1),
                temperature=checked_temperature(temperature), alpha=scaled_alpha(model, scale, solver),
                callback=progress_callback(progress, ctx.cancellations.checker(request)))
        path = ctx.outputs.png(grid(result.images), "samples")
        text = (f"**{n} samples** · solver **{solver}** ({describe_args(kwargs)}) · **NFE {result.nfe}** · "
                f"**{result.seconds:.2f} s** · "
                + (f"alpha {scale:g} × learned" if alpha_applies(model, solver) else
                   "alpha as learned" if is_mixed(model) else "no mixed prior"))
        return path, path, text

    event = go.click(run, [picker, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha],
                     [image, download, stats], api_name="sample", **QUICK)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)
