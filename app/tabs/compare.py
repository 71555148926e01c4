"""Compare tab: one seed, the picked latent model and a pixel-space baseline side by side at the same
solver settings, each with its grid, NFE and wall time, and the ratios (lsgm_core.comparison).

The baseline is any listed model of kind "pixel"; it starts as one trained on the picked model's
data set, else the first. The pixel U-Net is the slow side (seconds for 16 samples at 20 fast steps,
over a minute for an adaptive ODE at 1e-5), so the tab runs in the SLOW group, with progress and Stop.
"""
import json

import gradio as gr
import torch

from lsgm_core.comparison import compare

from ..common import SLOW, Context, integer, user_errors
from ..images import grid
from ..solver_controls import DEFAULT_SOLVER, describe_args, progress_callback, solver_args, solver_controls

MAX_SAMPLES = 64
LATENT_KIND, BASELINE_KIND = "lsgm", "pixel"  # lsgm_core.model.MODELS
NO_BASELINE = ("No pixel-space model to compare with: put one (a checkpoint of kind pixel, trained from "
               "configs/bmnist_pixel_vp.toml by python -m lsgm_core.train) in checkpoints/, then reload the page.")


def dataset_of(entry) -> str | None:
    """The data set a listed checkpoint was trained on (its config.json), None where it cannot be read."""
    try:
        return json.loads((entry.path / "config.json").read_text())["data"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def baselines(registry, model_id) -> tuple[list[str], str | None]:
    """The ids of the listed pixel-space models, and the one to start with for `model_id`: trained on
    the same data set, else the first (None: there is none)."""
    entries = registry.entries()
    pixel = [e for e in entries if e.kind == BASELINE_KIND]
    picked = next((e for e in entries if e.id == model_id), None)
    wanted = dataset_of(picked) if picked is not None else None
    same = [e for e in pixel if wanted is not None and dataset_of(e) == wanted]
    return [e.id for e in pixel], (same or pixel)[0].id if pixel else None


def checked_kind(model, model_id: str, kind: str, where: str, what_to_do: str) -> None:
    if model.kind != kind:
        raise ValueError(f"{model_id} is a model of kind {model.kind}, and the {where} takes one of kind {kind}: "
                         f"{what_to_do}")


def stats(model_id: str, result) -> str:
    return f"**{model_id}** · **NFE {result.nfe}** · **{result.seconds:.2f} s**"


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    ids, first = baselines(ctx.registry, ctx.registry.default_id())
    baseline = gr.Dropdown(ids, value=first, label="Baseline", allow_custom_value=True, elem_id="compare-baseline",
                           info="a pixel-space model, sampled with the same solver settings and seed as the picked "
                                "latent model")
    missing = gr.Markdown(NO_BASELINE, visible=first is None, elem_id="compare-missing")
    with gr.Row():
        num = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="Number of samples", elem_id="compare-num")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="compare-seed",
                         info="each model draws its own z1 from it, as Sample does: the same seed, the same images")
    solver, log_atol, log_rtol, steps = solver_controls("compare", DEFAULT_SOLVER, -5)
    with gr.Row():
        go = gr.Button("Compare", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    ratios = gr.Markdown(elem_id="compare-ratios")
    with gr.Row():
        with gr.Column():
            model_grid = gr.Image(label="Latent model", type="filepath", format="png", interactive=False,
                                  elem_id="compare-model-grid")
            model_stats = gr.Markdown(elem_id="compare-model-stats")
        with gr.Column():
            baseline_grid = gr.Image(label="Pixel-space baseline", type="filepath", format="png", interactive=False,
                                     elem_id="compare-baseline-grid")
            baseline_stats = gr.Markdown(elem_id="compare-baseline-stats")
    shown = gr.State(None)  # the (model, baseline) ids of the grids on the page, for their labels

    def offer(model_id):
        """The listed baselines, starting at the one for the picked model; a note where there is none."""
        ids, first = baselines(ctx.registry, model_id)
        return gr.update(choices=ids, value=first), gr.update(visible=first is None)

    @user_errors
    def run(model_id, baseline_id, num, seed, solver, log_atol, log_rtol, steps,
            request: gr.Request, progress=gr.Progress()):
        n = integer("number of samples", num, 1, MAX_SAMPLES)
        kwargs = solver_args(solver, log_atol, log_rtol, steps)
        seed = integer("seed", seed, 0, 2**31 - 1)
        model = ctx.registry.load(model_id)
        checked_kind(model, model_id, LATENT_KIND, "model picker",
                     "pick an LSGM (lsgm-...) in the model picker; the pixel-space side is this tab's Baseline")
        if not baseline_id:
            raise ValueError("pick a Baseline (a pixel-space model)" if baselines(ctx.registry, model_id)[0]
                             else NO_BASELINE)
        base = ctx.registry.load(baseline_id)
        checked_kind(base, baseline_id, BASELINE_KIND, "Baseline",
                     "pick a pixel-space model (sgm-...-pixel) as the Baseline; the LSGM side is the model picker")
        report = progress_callback(progress, ctx.cancellations.checker(request))
        names = {"model": model_id, "baseline": baseline_id}  # the progress text names the model it samples
        with torch.inference_mode():
            c = compare(model, base, n, solver, **kwargs, seed=seed,
                        callback=lambda d: report({**d, "side": names[d["side"]]}))
        line = (f"{n} samples each · seed {seed} · solver **{solver}** ({describe_args(kwargs)}) for both · "
                f"baseline / latent: **{c.speedup['seconds']:.1f}×** the wall time, "
                f"**{c.speedup['nfe']:.2f}×** the NFE")
        return (ctx.outputs.png(grid(c.model.images), "compare-model"), stats(model_id, c.model),
                ctx.outputs.png(grid(c.baseline.images), "compare-baseline"), stats(baseline_id, c.baseline),
                line, (model_id, baseline_id))

    def label(ids):
        model_id, baseline_id = ids
        return gr.update(label=f"{model_id} (latent)"), gr.update(label=f"{baseline_id} (pixel space)")

    gr.on([picker.change, demo.load], offer, picker, [baseline, missing], api_visibility="private", queue=False)
    event = go.click(run, [picker, baseline, num, seed, solver, log_atol, log_rtol, steps],
                     [model_grid, model_stats, baseline_grid, baseline_stats, ratios, shown], api_name="compare",
                     **SLOW)
    event.success(label, shown, [model_grid, baseline_grid], api_visibility="private", queue=False)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)
