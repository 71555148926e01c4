"""Interpolate tab: two images, encoded, interpolated linearly in z0 or spherically in z1, decoded.

Besides the strip, a path of PATH_FRAMES decoded frames is computed once per pair (by the fast
solver both ways: PATH_STEPS evaluations to invert A and B to z1, as many to decode the frames in
one batch) and sent to the page with it; the slider then shows one of those in the browser itself,
so a move costs no request at all (a request's round trip took 0.2-0.5 s on a busy 2-core CPU).
"""
import time

import gradio as gr
import torch

from lsgm_core import solvers

from ..common import QUICK, Context, integer, number, one_of, try_load, user_errors
from ..images import UPLOAD_RULES, data_uri, display_scale, grid, model_input, to_pil
from ..paths import ASSETS, CLASS_NAMES, shown_test_set
from ..solver_controls import LOG_TOL_MAX, LOG_TOL_MIN, progress_callback

MAX_IMAGES = 24
PATH_FRAMES = 25
# 20 fast steps each way bring A and B back within 1-1.5% (relative RMS of z0) on the shipped
# models, against 5% at 10 steps (README, "The app")
PATH_STEPS = 20
MODES = [("spherical in z1, through the ODE", "slerp_z1"), ("linear in z0", "linear_z0")]


def upload_image(**kwargs) -> gr.Image:
    """A gr.Image whose uploaded file reaches the app unopened, so that the app's own checks (size,
    pixel count, mode) give the message for a bad upload instead of a Pillow error. (Replaced on
    the instance: a gr.Image subclass would make Gradio write a .pyi stub beside this module.)"""
    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], height=200, **kwargs)
    opened = image.preprocess

    def preprocess(payload):
        if payload is None or (payload.url or "").startswith("data:"):  # pasted images arrive inline
            return opened(payload)
        return payload.path

    image.preprocess = preprocess
    return image


def examples() -> dict[str, str]:
    """Shipped real test images by display name."""
    found = {}
    for path in sorted((ASSETS / "examples").glob("*.png")):
        dataset, label, k = path.stem.rsplit("-", 2)
        found[f"{dataset}: {CLASS_NAMES[dataset][int(label)]} ({'ab'[int(k)]})"] = str(path)
    return found


# the path's frame nearest the slider, shown in the page without asking the server
SHOW_FRAME = """(position) => {
  const frames = document.querySelectorAll("#interp-frame img");
  const k = Math.round(position * (frames.length - 1));
  frames.forEach((im, i) => { im.style.display = i === k ? "block" : "none"; });
  return [];
}"""


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    shipped = examples()
    names = list(shipped)

    def pair(dataset: str) -> tuple[str, str]:
        """A default A and B from a data set's shipped examples: two classes that differ clearly."""
        return tuple(f"{dataset}: {CLASS_NAMES[dataset][c]} (a)" for c in (3, 8))

    first_a, first_b = pair("mnist")
    with gr.Row():
        with gr.Column():
            pick_a = gr.Dropdown(names, value=first_a, label="Example for A", info="real test images shipped with the app")
            img_a = upload_image(value=shipped[first_a], label="Image A", elem_id="interp-a")
        with gr.Column():
            pick_b = gr.Dropdown(names, value=first_b, label="Example for B")
            img_b = upload_image(value=shipped[first_b], label="Image B", elem_id="interp-b")
    gr.Markdown(f"Or upload your own: {UPLOAD_RULES}. Images are converted to the model's input "
                "(grey or RGB, center-cropped, resized; a light background is inverted for MNIST-style models).")
    with gr.Row():
        mode = gr.Radio(MODES, value="slerp_z1", label="Interpolation")
        count = gr.Slider(3, MAX_IMAGES, value=10, step=1, label="Images in the strip")
        log_tol = gr.Slider(LOG_TOL_MIN, LOG_TOL_MAX, value=-5, step=0.5,
                            label="log10 ODE tolerance (spherical mode)", info="atol = rtol = 10^x")
    with gr.Row():
        go = gr.Button("Interpolate", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="interp-stats")
    strip = gr.Image(label="Decoded strip from A to B", type="filepath", format="png", interactive=False,
                     elem_id="interp-strip")
    with gr.Row():
        with gr.Column():
            position = gr.Slider(0, 1, value=0, step=1 / (PATH_FRAMES - 1), label="Along the path from A to B",
                                 info="computed with the strip; moving it shows the decoded image there",
                                 elem_id="interp-position")
            path_stats = gr.Markdown(elem_id="interp-path-stats")
        frame = gr.HTML(label="Decoded at this point", elem_id="interp-frame")
        gif = gr.Image(label="Animation", type="filepath", interactive=False, height=200)
    download = gr.DownloadButton("Download GIF")

    for pick, img in ((pick_a, img_a), (pick_b, img_b)):
        pick.change(lambda name: shipped.get(name), pick, img, api_visibility="private", queue=False)

    def examples_for_model(model_id):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip(), gr.skip()
        return pair(shown_test_set(model.config["data"]["dataset"]))

    gr.on([picker.change, demo.load], examples_for_model, picker, [pick_a, pick_b], api_visibility="private")

    def inputs(model_id, a, b, mode):
        """The model and the two images as its input, each with its conversion notes."""
        if not a or not b:
            raise ValueError("two images are needed: upload or pick an image for A and for B")
        one_of("interpolation", mode, [m for _, m in MODES])
        model = ctx.registry.load(model_id)
        return model, model_input(a, model), model_input(b, model)

    @user_errors
    def run(model_id, a, b, mode, count, log_tol, request: gr.Request, progress=gr.Progress()):
        model, (xa, notes_a), (xb, notes_b) = inputs(model_id, a, b, mode)
        n = integer("images in the strip", count, 3, MAX_IMAGES)
        tol = 10 ** number("log10 ODE tolerance", log_tol, LOG_TOL_MIN, LOG_TOL_MAX)
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
        return strip_path, gif_path, gif_path, text + (f"  \n{notes}" if notes else "")

    @user_errors
    def path(model_id, a, b, mode):
        model, (xa, _), (xb, _) = inputs(model_id, a, b, mode)
        start = time.perf_counter()
        with torch.inference_mode():
            images, z0 = solvers.interpolate(model, xa, xb, PATH_FRAMES, mode, steps=PATH_STEPS)
            ends = model.encode(torch.cat([xa, xb]))[0]
        seconds = time.perf_counter() - start
        shown = "".join(f'<img src="{data_uri(to_pil(im))}" alt="frame {k}" style="display:{"block" if k == 0 else "none"};'
                        'image-rendering:pixelated;height:160px">' for k, im in enumerate(images))
        text = f"{PATH_FRAMES} frames in **{seconds:.2f} s**"
        if mode == "slerp_z1":
            error = ((z0[[0, -1]] - ends).pow(2).mean() / ends.pow(2).mean()).sqrt().item()
            text += (f" · fast solver, {PATH_STEPS} steps each way; A and B come back within "
                     f"**{error:.1%}** (relative RMS of z0)")
        return shown, gr.Slider(value=0), text

    event = go.click(run, [picker, img_a, img_b, mode, count, log_tol], [strip, gif, download, stats],
                     api_name="interpolate", **QUICK)
    walk = event.success(path, [picker, img_a, img_b, mode], [frame, position, path_stats],
                         api_name="interpolation_path", **QUICK)
    position.input(None, position, None, js=SHOW_FRAME, api_visibility="private")
    stop.click(ctx.cancellations.request, None, None, cancels=[event, walk], api_visibility="private", queue=False)
