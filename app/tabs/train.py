"""Train tab: start a small run in a child process, watch its progress and loss, stop it."""
import html
import time
from dataclasses import asdict

import gradio as gr
from PIL import Image

from lsgm_core.data import DATASETS

from .. import plots
from ..common import Context, integer, number, one_of, user_errors
from ..images import MAX_UPLOAD_MB
from ..runs import MAX_STEPS, SIZES, RunManager, read_log
from ..uploads import IMAGE_SIZE, Limits

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


UPLOAD_HELP = (f"A zip of images, or several images (PNG, JPEG, BMP, GIF, WebP, TIFF): up to {Limits.files:,} "
               f"images, {MAX_UPLOAD_MB} MB a file, {Limits.unpacked_bytes // 2**20} MB unzipped, {Limits.megapixels:,g} "
               "megapixels in all. Each is center-cropped "
               f"and resized to {IMAGE_SIZE}x{IMAGE_SIZE}; the set stays grey if every image is grey, else it is RGB. "
               "Hidden and system files, and files that are not images, are skipped and named; a zip with absolute "
               "paths, '..' or links is refused. The data set then appears in 'Data set' below as `upload:<name>`.")


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    runs: RunManager = ctx.services["runs"]
    with gr.Accordion("Your own images: upload a data set", open=False, elem_id="upload"):
        gr.Markdown(UPLOAD_HELP)
        with gr.Row():
            files = gr.File(file_count="multiple", file_types=["image", ".zip"], type="filepath",
                            label="Zip or images", elem_id="upload-files")
            with gr.Column():
                upload_name = gr.Textbox(label="Data set name", elem_id="upload-name",
                                         info="letters, digits, - _ .; kept in the app's own folder")
                prepare = gr.Button("Prepare data set", elem_id="upload-prepare")
        with gr.Row():
            preview = gr.Image(label="Preview (the first 64 images, as stored)", type="filepath", format="png",
                               interactive=False, elem_id="upload-preview")
            summary = gr.Markdown(elem_id="upload-report")
        report_json = gr.JSON(visible=False)
    with gr.Row():
        name = gr.Textbox(label="Run name", elem_id="train-name", info="letters, digits, - _ .; the run is saved as runs/<name>")
        # custom values: an API caller may name a data set uploaded after this page was built
        dataset = gr.Dropdown(list(DATASETS) + runs.uploads.ids(), value="binarized-mnist", label="Data set",
                              allow_custom_value=True, elem_id="train-dataset",
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
    def prepare_upload(paths, name):
        report = runs.uploads.prepare(name, list(paths or []))
        with Image.open(runs.uploads.preview(report.id)) as im:
            shown = ctx.outputs.png(im.copy(), "upload-preview")  # served from the app's output folder
        return shown, report.markdown(), {**asdict(report), "id": report.id}

    def select_upload(report):
        return gr.update(choices=list(DATASETS) + runs.uploads.ids(), value=report["id"])

    prepare.click(prepare_upload, [files, upload_name], [preview, summary, report_json],
                  api_name="upload_dataset", concurrency_limit=1).success(
        select_upload, report_json, dataset, api_visibility="private", queue=False)

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
    demo.load(lambda: gr.update(choices=list(DATASETS) + runs.uploads.ids()), None, dataset,
              api_visibility="private", queue=False)
