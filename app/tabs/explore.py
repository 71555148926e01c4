"""Explore tab: sliders move the starting noise z1 along the principal directions of the model's
z1 -> z0 map (lsgm_core.directions), and the decoded sample follows as they move.

The map is the quickest sampler the model has: its distilled student in one step, else the fast
solver in FAST_STEPS steps. A pixel-space model is refused with a message: its z1 is image-sized
noise (1,024 dimensions), whose fit through the pixel U-Net took minutes on a 2-core CPU.
"""
import random
import threading
import weakref

import gradio as gr
import torch

from lsgm_core import solvers
from lsgm_core.directions import Directions, principal_directions
from lsgm_core.tensors import seeded_generator

from ..common import LIVE, Context, integer, number, try_load, user_errors
from ..images import data_uri, display_scale, to_pil
from ..solver_controls import is_mixed

DIRECTIONS = 6  # sliders
DRAWS = 1000  # seeded z1 draws of the fit: eight times the default model's 128 active dimensions
DRAWS_SEED = 0
FAST_STEPS = 4  # the fast solver's steps where there is no student: a few, to follow a drag
RANGE = 3.0  # z1's coordinate along a unit direction is N(0, 1): +-3 covers nearly all of it
VIEW_PIXELS = 224  # the sample's size on the page
FIT = {"concurrency_id": "explore_fit", "concurrency_limit": 1}  # seconds each: never in the quick group's way


def sampler(model) -> tuple[str, dict]:
    """The solver and options the tab decodes with, and fits the directions of."""
    return ("distilled", {"steps": 1}) if model.student is not None else ("fast", {"steps": FAST_STEPS})


def latent_only(model) -> None:
    if model.kind != "lsgm":
        raise ValueError("Explore moves the latent z1 of an LSGM; this is a pixel-space model, whose z1 is "
                         "image-sized noise: pick an LSGM (lsgm-...) in the model picker")


def fit(model) -> Directions:
    """The model's top directions (fewer where it has fewer active dimensions)."""
    latent_only(model)
    solver, options = sampler(model)
    shape = tuple(model.prior.shape)
    active = model.prior.active if is_mixed(model) else None
    dims = (int((active > 0).sum()) if active is not None else shape[0]) * shape[1] * shape[2]
    with torch.inference_mode():
        return principal_directions(
            lambda z1: solvers.sample(model, len(z1), solver, **options, z1=z1, decode=False).z0,
            shape, min(DIRECTIONS, dims), DRAWS, active, seed=DRAWS_SEED)


def start(model, seed: int, coords, directions: Directions) -> torch.Tensor:
    """z1 [1, *shape]: the seed's N(0, I) draw (as solvers.sample draws it) moved by coords[k] along direction k."""
    z1 = torch.randn((1,) + tuple(model.prior.shape), generator=seeded_generator(seed))
    k = len(directions.gains)
    return z1 + (torch.tensor(coords[:k]).view(k, 1, 1, 1) * directions.vectors).sum(0, keepdim=True)


class DirectionCache:
    """Each model's directions, fitted once (seconds) and kept while the model is loaded."""

    def __init__(self):
        self._fits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # gone with the registry's model
        self._lock = threading.Lock()

    def get(self, model) -> Directions:
        with self._lock:  # one fit per model, however many pages ask at once
            if model not in self._fits:
                self._fits[model] = fit(model)
            return self._fits[model]


def describe(model, directions: Directions) -> str:
    solver, options = sampler(model)
    how = (f"the distilled student in {options['steps']} step" if solver == "distilled" else
           f"the fast solver in {options['steps']} steps (this model has no distilled student)")
    k = len(directions.gains)
    gains = ", ".join(f"{g:.2f}" for g in directions.gains)
    missing = f" (only {k} directions: the model has {k} active dimensions)" if k < DIRECTIONS else ""
    return (f"Each slider moves z1 of the active latent channels along one principal direction of the sampler's z1 → z0 map: the right "
            f"singular vectors of its least-squares linear fit over {DRAWS} seeded draws, largest first{missing}. "
            f"Gains (how far z0 moves per unit of z1): {gains}. Decoded by {how}.")


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    cache = ctx.services.setdefault("explore_directions", DirectionCache())
    info = gr.Markdown("Fitting the directions of the picked model…", elem_id="explore-info")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="explore-seed",
                                 info="the starting z1, before the sliders move it")
                random_start = gr.Button("Random start")
                reset = gr.Button("Reset")
            sliders = [gr.Slider(-RANGE, RANGE, value=0, step=0.1, label=f"direction {k + 1}",
                                 elem_id=f"explore-d{k + 1}") for k in range(DIRECTIONS)]
        view = gr.HTML(elem_id="explore-view", js_on_load=None)

    @user_errors
    def prepare(model_id, opened):
        """Fit the picked model's directions before the first drag, and say what they are; only once
        this page has opened the tab (a fit is seconds of CPU that the other tabs should not pay)."""
        if not opened:
            return gr.skip()
        model = ctx.registry.load(model_id)
        try:
            return describe(model, cache.get(model))
        except ValueError as e:  # a pixel-space model: the tab says why it does not apply, without a pop-up
            return f"⚠ {e}"

    @user_errors
    def show(model_id, seed_value, *coords):
        s = integer("seed", seed_value, 0, 2**31 - 1)
        # gradio checks each slider's range but lets NaN through, which would decode to garbage
        c = [number(f"direction {k + 1}", v, -RANGE, RANGE) for k, v in enumerate(coords)]
        model = ctx.registry.load(model_id)
        solver, options = sampler(model)
        with torch.inference_mode():
            image = solvers.sample(model, 1, solver, **options, z1=start(model, s, c, cache.get(model)),
                                   runtime=ctx.runtime_for(solver)).images[0]
        im = to_pil(image, display_scale(image.shape[-1], VIEW_PIXELS))
        return (f'<img src="{data_uri(im)}" alt="the sample at seed {s}" data-seed="{s}" '
                f'data-coords="{",".join(f"{v:g}" for v in c)}" style="image-rendering: pixelated">')

    def first_view(model_id, opened, *rest):
        """The view once the directions are fitted; empty for a model the tab does not apply to (the info says why)."""
        if not opened:
            return gr.skip()
        model = try_load(ctx, model_id)
        return show(model_id, *rest) if model is not None and model.kind == "lsgm" else ""

    opened = gr.State(False)
    inputs = [picker, seed, *sliders]
    tab = info.parent  # this tab's gr.Tab (build runs inside it)
    for trigger in (picker.change, tab.select(lambda: True, None, opened, api_visibility="private", queue=False).then):
        trigger(prepare, [picker, opened], info, api_visibility="private", **FIT).then(
            first_view, [picker, opened, seed, *sliders], view, api_visibility="private", queue=False)
    gr.on([c.change for c in (seed, *sliders)], show, inputs, view, api_name="explore", **LIVE)
    # a fresh seed, shown in the box: a random start that can be drawn again
    random_start.click(lambda: random.randrange(2**31), None, seed, api_visibility="private", queue=False)
    reset.click(lambda: [0] * DIRECTIONS, None, sliders, api_visibility="private", queue=False)
