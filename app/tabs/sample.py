"""Sample tab: draw images from the model with a chosen solver, tolerance or step count, and alpha.

For a model with a distilled student the tab opens on the `distilled` solver with Live on: the grid
then redraws as the controls move, with no button press (`live_view`).
"""

import gradio as gr
import torch

from lsgm_core import solvers

from ..common import LIVE, QUICK, Context, integer, try_load, user_errors
from ..images import data_uri, grid
from ..solver_controls import (DEFAULT_SOLVER, alpha_applies, alpha_control, checked_alpha_scale, checked_temperature,
                               default_steps, describe_args, is_mixed, progress_callback, scaled_alpha, solver_args,
                               solver_controls, temperature_control)

MAX_SAMPLES = 64
LIVE_SOLVER = "distilled"  # the only solver quick enough to answer a drag on a CPU
# The tab as it opens, in the order of the /sample endpoint's arguments after the model (app.bench uses it).
DEFAULTS = {"num": 16, "seed": 0, "temperature": 1.0, "solver": DEFAULT_SOLVER, "log_atol": -5, "log_rtol": -5,
            "steps": default_steps(DEFAULT_SOLVER), "alpha_scale": 1.0}


def live_view(image, n: int, seed: int, temperature: float, steps: int) -> str:
    """The live grid as inline HTML (an inline PNG: no file to write, cache and fetch); its data attributes say which controls drew it (the tests wait on them)."""
    return (f'<img src="{data_uri(image)}" alt="{n} live samples" data-num="{n}" data-seed="{seed}" '
            f'data-temperature="{temperature:g}" data-steps="{steps}" style="image-rendering: pixelated">')


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    with gr.Row():
        num = gr.Slider(1, MAX_SAMPLES, value=DEFAULTS["num"], step=1, label="Number of samples",
                        elem_id="sample-num")
        seed = gr.Number(DEFAULTS["seed"], precision=0, minimum=0, label="Seed",
                         info="the same seed gives the same images", elem_id="sample-seed")
        temperature = temperature_control(DEFAULTS["temperature"], elem_id="sample-temperature")
    solver, log_atol, log_rtol, steps = solver_controls("sample", DEFAULTS["solver"], DEFAULTS["log_atol"])
    alpha = alpha_control("sample", DEFAULTS["alpha_scale"], ctx, picker, demo, solver)
    live = gr.Checkbox(False, label="Live", elem_id="sample-live",
                       info=f"with the {LIVE_SOLVER} solver, redraw as the controls move (on for a model with a "
                            "student); Sample still makes the PNG to download")
    with gr.Row():
        go = gr.Button("Sample", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="sample-stats")
    live_grid = gr.HTML(visible=False, elem_id="sample-live-grid", js_on_load=None)
    with gr.Row():
        image = gr.Image(label="Samples", type="filepath", format="png", interactive=False, elem_id="sample-grid")
    download = gr.DownloadButton("Download PNG")

    def draw(model_id, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha_scale, callback=None):
        """The grid of a request's samples, the stats line, and the checked (n, seed, temperature, steps)."""
        n = integer("number of samples", num, 1, MAX_SAMPLES)
        kwargs = solver_args(solver, log_atol, log_rtol, steps)
        scale = checked_alpha_scale(alpha_scale)
        seed, temperature = integer("seed", seed, 0, 2**31 - 1), checked_temperature(temperature)
        model = ctx.registry.load(model_id)
        runtime = ctx.runtime_for(solver)
        with torch.inference_mode():
            result = solvers.sample(model, n, solver, **kwargs, seed=seed, temperature=temperature,
                                    alpha=scaled_alpha(model, scale, solver), callback=callback, runtime=runtime)
        on = "" if runtime == "torch" else f" on {runtime}"
        jump = solvers.check_denoise_t(solver, None, model).get("denoise_t")
        on += f", jump to E[z0 | z_t] at t = {jump:g}" if jump else ""
        text = (f"**{n} samples** · solver **{solver}** ({describe_args(kwargs)}{on}) · **NFE {result.nfe}** · "
                f"**{result.seconds:.2f} s** · "
                + (f"alpha {scale:g} × learned" if alpha_applies(model, solver) else
                   "alpha as learned" if is_mixed(model) else "no mixed prior"))
        return grid(result.images), text, (n, seed, temperature, kwargs.get("steps"))

    @user_errors
    def run(model_id, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha_scale,
            request: gr.Request, progress=gr.Progress()):
        picture, text, _ = draw(model_id, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha_scale,
                                progress_callback(progress, ctx.cancellations.checker(request)))
        path = ctx.outputs.png(picture, "samples")
        return path, path, text

    @user_errors
    def redraw(model_id, num, seed, temperature, solver, steps, alpha_scale, on):
        """The live grid, or hidden while Live is off or the solver is not the student's."""
        if not on or solver != LIVE_SOLVER:
            return gr.update(visible=False), gr.skip()
        picture, text, key = draw(model_id, num, seed, temperature, solver, None, None, steps, alpha_scale)
        return gr.update(value=live_view(picture, *key), visible=True), text

    def open_live(model_id):
        """A model with a student opens on its solver with Live on; any other turns Live off. The steps
        are set here too, so that the live redraw this triggers never sees another solver's count."""
        model = try_load(ctx, model_id)
        if model is None or model.student is None:
            return gr.update(value=False), gr.skip(), gr.skip()
        return gr.update(value=True), gr.update(value=LIVE_SOLVER), gr.update(value=default_steps(LIVE_SOLVER))

    event = go.click(run, [picker, num, seed, temperature, solver, log_atol, log_rtol, steps, alpha],
                     [image, download, stats], api_name="sample", **QUICK)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)
    gr.on([picker.change, demo.load], open_live, picker, [live, solver, steps], api_visibility="private", queue=False)
    # not solver.change: its step reset (solver_controls) would race the redraw with the old solver's
    # steps; a new solver always resets the steps, whose change redraws
    gr.on([c.change for c in (picker, num, seed, temperature, steps, alpha, live)], redraw,
          [picker, num, seed, temperature, solver, steps, alpha, live], [live_grid, stats], api_name="sample_live",
          **LIVE)
