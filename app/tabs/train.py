"""Train tab: start a small run in a child process, watch its progress and loss, stop it."""
import html
import time

import gradio as gr

from lsgm_core.data import DATASETS

from .. import plots
from ..common import Context, integer, number, one_of, user_errors
from ..runs import MAX_STEPS, SIZES, RunManager, read_log

POLL_S = 2.0


def progress_html(st: dict) -> str:
    if st["state"] == "idle":
        return f"<p>{html.escape(st['message'])}</p>"
    frac = st["step"] / max(1, st["max_steps"])
    loss = f" · loss {st['loss']:.2f}" if st.get("loss") is not None else ""
    return (f'<div id="train-progress" data-state="{st["state"]}"><b>{st["name"]}</b>: {st["state"]} · '
            f'step {st["step"]} / {st["max_steps"]} ({frac:.0%}){loss} · {st["seconds"]:.0f} s'
            f'<progress value="{st["step"]}" max="{st["max_steps"]}" style="width:100%;height:18px"></progress>'
            f'<p>{html.escape(st["message"])}</p></div>')


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    runs: RunManager = ctx.services["runs"]
    with gr.Row():
        name = gr.Textbox(label="Run name", elem_id="train-name", info="letters, digits, - _ .; the run is saved as runs/<name>")
        dataset = gr.Dropdown(list(DATASETS), value="binarized-mnist", label="Data set",
                              info="stage 2 keeps the data set of its stage-1 model")
        stage = gr.Radio([("1: VAE with a N(0, I) prior", 1), ("2: VAE and SGM prior", 2)], value=1, label="Stage")
        init_from = gr.Dropdown([], label="Start from (stage 2)", elem_id="train-init", allow_custom_value=True,
                                info="a stage-1 model (the first one listed, unless you pick another)")
    with gr.Row():
        steps = gr.Slider(10, MAX_STEPS, value=500, step=10, label="Training steps", elem_id="train-steps")
        size = gr.Radio(list(SIZES), value="tiny", label="Network size",
                        info="tiny: seconds per 100 steps on a laptop CPU; base: lsgm_core's defaults")
        log_lr = gr.Slider(-5, -2, value=-3, step=0.25, label="log10 learning rate")
    with gr.Row():
        start = gr.Button("Start training", variant="primary")
        stop = gr.Button("Stop training", variant="stop")
    status = gr.HTML(elem_id="train-status")
    curve = gr.Plot(label="Training loss", elem_id="train-curve")
    status_json = gr.JSON(visible=False)
    seen = gr.State(None)  # the status last drawn on this page, to skip redrawing an unchanged one
    timer = gr.Timer(POLL_S)

    def stage1_models():
        return [e.id for e in ctx.registry.entries() if e.label.startswith("lsgm, stage 1")]

    @user_errors
    def start_run(name, dataset, stage, init_from, steps, size, log_lr):
        one_of("stage", stage, (1, 2))
        path = ctx.registry.entry(init_from).path if stage == 2 and init_from else None
        if path is not None and init_from not in stage1_models():
            raise ValueError(f"{init_from} is not a stage-1 LSGM; stage 2 starts from one")
        runs.start(name, dataset, stage, path, integer("training steps", steps, 1, MAX_STEPS),
                   one_of("network size", size, list(SIZES)), 10 ** number("log10 learning rate", log_lr, -6, -1))
        return runs.status()

    @user_errors
    def stop_run():
        runs.stop()
        return runs.status()

    def show(_, seen):
        """Redraw from the run's files; also keeps the model picker's list current."""
        st = runs.status()
        key = (st.get("name"), st["state"], st.get("step"))
        choices = ctx.registry.choices()
        if key == (seen or {}).get("key") and choices == seen.get("choices"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        records = read_log(runs.current.out) if runs.current else []
        fig = plots.training_curves(records, f"{st['name']}: loss per step") if records else None
        return (progress_html(st), fig, gr.update(choices=choices), gr.update(choices=stage1_models()),
                {"key": key, "choices": choices})

    start.click(start_run, [name, dataset, stage, init_from, steps, size, log_lr], status_json,
                api_name="train_start", concurrency_limit=None)
    stop.click(stop_run, None, status_json, api_name="train_stop", concurrency_limit=None)
    def train_status() -> dict:
        return runs.status()

    gr.api(train_status, api_name="train_status", queue=False)
    # a page (re)load redraws at once; then the timer keeps it current, outside the queue
    gr.on([timer.tick, demo.load, status_json.change], show, [status_json, seen],
          [status, curve, picker, init_from, seen], api_visibility="private", queue=False)
    demo.load(lambda: f"run-{time.strftime('%m%d-%H%M%S')}", None, name, api_visibility="private", queue=False)

    def default_init():
        choices = stage1_models()
        return gr.update(choices=choices, value=choices[0] if choices else None)

    demo.load(default_init, None, init_from, api_visibility="private", queue=False)
