"""Interpolate tab: two images, encoded, interpolated linearly in z0 or spherically in z1, decoded."""
import time

import gradio as gr
import torch

from lsgm_core import solvers

from ..common import QUICK, Context, integer, number, one_of, user_errors
from ..images import UPLOAD_RULES, display_scale, grid, model_input, to_pil
from ..paths import ASSETS, CLASS_NAMES
from .sample import progress_callback

MAX_IMAGES = 24
MODES = [("spherical in z1, through the ODE", "slerp_z1"), ("linear in z0", "linear_z0")]

from gradio.events import Dependency

class UploadImage(gr.Image):
    """gr.Image that hands the uploaded file over unopened, so that the app's own checks (size,
    pixel count, mode) give the message for a bad upload instead of a Pillow error."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):
        if payload is None or (payload.url or "").startswith("data:"):
            return super().preprocess(payload)
        return payload.path
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def examples() -> dict[str, str]:
    """Shipped real test images by display name."""
    found = {}
    for path in sorted((ASSETS / "examples").glob("*.png")):
        dataset, label, k = path.stem.rsplit("-", 2)
        found[f"{dataset}: {CLASS_NAMES[dataset][int(label)]} ({'ab'[int(k)]})"] = str(path)
    return found


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    shipped = examples()
    names = list(shipped)
    with gr.Row():
        with gr.Column():
            pick_a = gr.Dropdown(names, value=names[0] if names else None, label="Example for A",
                                 info="real test images shipped with the app")
            img_a = UploadImage(value=shipped.get(names[0]) if names else None, label="Image A", type="filepath",
                                image_mode=None, sources=["upload", "clipboard"], height=200, elem_id="interp-a")
        with gr.Column():
            pick_b = gr.Dropdown(names, value=names[5] if len(names) > 5 else None, label="Example for B")
            img_b = UploadImage(value=shipped.get(names[5]) if len(names) > 5 else None, label="Image B",
                                type="filepath", image_mode=None, sources=["upload", "clipboard"], height=200,
                                elem_id="interp-b")
    gr.Markdown(f"Or upload your own: {UPLOAD_RULES}. Images are converted to the model's input "
                "(grey or RGB, center-cropped, resized; a light background is inverted for MNIST-style models).")
    with gr.Row():
        mode = gr.Radio(MODES, value="slerp_z1", label="Interpolation")
        count = gr.Slider(3, MAX_IMAGES, value=10, step=1, label="Images in the strip")
        log_tol = gr.Slider(-8, -1, value=-5, step=0.5, label="log10 ODE tolerance (spherical mode)",
                            info="atol = rtol = 10^x")
    with gr.Row():
        go = gr.Button("Interpolate", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="interp-stats")
    strip = gr.Image(label="Decoded strip from A to B", type="filepath", format="png", interactive=False,
                     elem_id="interp-strip")
    gif = gr.Image(label="Animation", type="filepath", interactive=False, height=200)
    download = gr.DownloadButton("Download GIF", visible=False)

    for pick, img in ((pick_a, img_a), (pick_b, img_b)):
        pick.change(lambda name: shipped.get(name), pick, img, api_visibility="private", queue=False)

    @user_errors
    def run(model_id, a, b, mode, count, log_tol, request: gr.Request, progress=gr.Progress()):
        if not a or not b:
            raise ValueError("two images are needed: upload or pick an image for A and for B")
        one_of("interpolation", mode, [m for _, m in MODES])
        n = integer("images in the strip", count, 3, MAX_IMAGES)
        tol = 10 ** number("log10 ODE tolerance", log_tol, -8, -1)
        model = ctx.registry.load(model_id)
        (xa, notes_a), (xb, notes_b) = model_input(a, model), model_input(b, model)
        start = time.perf_counter()
        with torch.inference_mode():
            images, _ = solvers.interpolate(
                model, xa, xb, n, mode, atol=tol, rtol=tol,
                callback=progress_callback(progress, ctx.cancellations.checker(request)))
        seconds = time.perf_counter() - start
        strip_path = ctx.outputs.png(grid(images, ncol=n), "interpolation")
        frames = [to_pil(im, display_scale(im.shape[-1], 160)) for im in images]
        gif_path = ctx.outputs.gif(frames + frames[-2:0:-1], "interpolation", ms_per_frame=150)  # there and back
        notes = "; ".join([f"A: {x}" for x in notes_a] + [f"B: {x}" for x in notes_b])
        text = f"**{n} images** · {dict((m, l) for l, m in MODES)[mode]} · **{seconds:.2f} s**"
        return strip_path, gif_path, gr.update(value=gif_path, visible=True), text + (f"  \n{notes}" if notes else "")

    event = go.click(run, [picker, img_a, img_b, mode, count, log_tol], [strip, gif, download, stats],
                     api_name="interpolate", **QUICK)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)