"""Latent map tab: UMAP of the encoder's z0 means of real test images, coloured by class, with the
model's own samples projected into the same map, a linear probe on z0, and the coordinates as CSV.
The analysis is lsgm_core.latent_map's; this tab finds the images, draws the map and keeps the last few.

Real images come from the data folder (--data-dir) when it holds the data set, else from the
5,000 shipped in assets/latent/, so the map works offline on a fresh machine.
"""
import threading
from collections import OrderedDict

import gradio as gr
import numpy as np
import torch

from lsgm_core import DataError, latent_map, load_dataset
from lsgm_core.tensors import crop

from .. import plots, solver_controls
from ..common import SLOW, Context, integer, one_of, try_load, user_errors
from ..images import data_uri, png_data_uris, to_pil
from ..paths import ASSETS, CLASS_NAMES, shown_test_set
from ..uploads import OWN_IMAGES, training_images

MAX_POINTS = 10_000
MAX_SAMPLES = 1000
_CACHE_SIZE = 8
PLACING = "drawing and placing {} model samples…"


class LatentMaps:
    """Maps computed so far (the most recent few), and the real images with their hover thumbnails."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._maps: OrderedDict[tuple, dict] = OrderedDict()
        self._real: dict[tuple, tuple] = {}
        self._thumbs: dict[tuple, list[str]] = {}
        self._lock, self._thumbs_lock = threading.Lock(), threading.Lock()

    def thumbs(self, key: tuple, images: torch.Tensor, n: int) -> list[str]:
        """Hover images (PNG data URIs) of the first n of `images` (uint8), made as a map first needs
        them: encoding all 10,000 up front cost more than the rest of a map from the cache."""
        with self._thumbs_lock:
            have = self._thumbs.setdefault(key, [])
            have.extend(png_data_uris(images[len(have):n]))
            return have[:n]

    def real(self, dataset: str, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """(images uint8 [N, 1, 28 + 2 pad, ...], labels, the images unpadded, source) of a test set."""
        key = (dataset, pad)
        if key not in self._real:
            images, labels, source = None, None, "shipped subset (assets/latent)"
            if self.ctx.data_dir is not None:
                try:
                    ds = load_dataset(dataset, "test", self.ctx.data_dir, download=False)
                    images, labels = crop(ds.images, ds.crop), ds.labels
                    source = f"data folder {self.ctx.data_dir}"
                except DataError:
                    pass  # no such data in the folder: the shipped subset will do
            if images is None:
                with np.load(ASSETS / "latent" / f"{dataset}-test.npz") as f:
                    images = torch.from_numpy(f["images"])[:, None]
                    labels = torch.from_numpy(f["labels"].astype(np.int64))
            padded = torch.nn.functional.pad(images, (pad,) * 4)
            self._real[key] = (padded, labels, images[:MAX_POINTS], source)
        return self._real[key]

    def own(self, model) -> tuple:
        """A folder-trained model's own images, with no classes: coloured by k-means cluster of the pixels."""
        spec = model.config["data"]["dataset"]
        if not spec.startswith("folder:"):
            raise ValueError(f"'{OWN_IMAGES}' is for a model trained on your own images; this one was trained "
                             f"on {spec}: pick its test set")
        if ("own", spec) not in self._real:
            images, labels, names = training_images(spec, MAX_POINTS)
            self._real[("own", spec)] = (images, labels, names, images, f"model's training folder ({len(names)} clusters)")
        return self._real[("own", spec)]

    def compute(self, model_id: str, dataset: str, n: int, n_samples: int, seed: int, check, progress):
        """Yields the map: from a model's shipped map first without its samples ("partial": True),
        which takes a second where drawing and decoding the samples take several, then the whole."""
        entry = self.ctx.registry.entry(model_id)
        key = (str(entry.path), (entry.path / "meta.json").stat().st_mtime, dataset, n, n_samples, seed)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                yield {**self._maps[key], "cached": True, "partial": False}
                return
        model = self.ctx.registry.load(model_id)
        if model.image_size != 32:
            raise ValueError(f"the latent map uses 28x28 test images padded to 32x32; this model takes "
                             f"{model.image_size}x{model.image_size} images")
        if dataset == OWN_IMAGES:
            images, labels, names, unpadded, source = self.own(model)
            thumbs_key = ("own", model.config["data"]["dataset"])
        else:
            images, labels, unpadded, source = self.real(dataset, model.crop)
            names, thumbs_key = CLASS_NAMES[dataset], (dataset, model.crop)
        n = min(n, len(images))
        # a model's distilled student draws the samples in one evaluation, so that a shipped map opens at once
        solver = "distilled" if getattr(model, "student", None) is not None else solver_controls.DEFAULT_SOLVER
        steps = solver_controls.default_steps(solver)
        shown = "of its training images" if dataset == OWN_IMAGES else f"{dataset} test images"

        def present(result: latent_map.LatentMap, source: str) -> dict:
            title = f"UMAP of {result.space}: {n} {shown}, {len(result.sample_xy)} model samples (black x)"
            fig = plots.latent_map(result.xy, result.labels, names, self.thumbs(thumbs_key, unpadded, n),
                                   result.sample_xy, [data_uri(to_pil(im)) for im in result.sample_images], title)
            return {"figure": fig, "accuracy": result.accuracy, "csv": result.csv(names), "n": n, "source": source,
                    "space": result.space, "classes": len(names)}

        cache = latent_map.load_cache(model, entry.path)
        if cache is not None and n <= len(cache.labels) and latent_map.matches(cache, dataset, images):
            source += f", map shipped with the model (its probe: all {len(cache.labels)} of its images)"
            drawn = lambda k: latent_map.cached_map(model, cache, n, num_samples=k, seed=seed,  # noqa: E731
                                                    solver=solver, steps=steps, device=self.ctx.device, check=check)
            if n_samples:
                yield {**present(drawn(0), source), "cached": False, "partial": True}
            out = present(drawn(n_samples), source)
        else:
            out = present(latent_map.latent_map(
                model, images[:n], labels[:n], num_samples=n_samples, seed=seed, solver=solver, steps=steps,
                device=self.ctx.device, check=check, progress=lambda frac, desc: progress(frac, desc=desc)), source)
        with self._lock:
            self._maps[key] = out
            while len(self._maps) > _CACHE_SIZE:
                self._maps.popitem(last=False)
        yield {**out, "cached": False, "partial": False}


HOVER_JS = """
<script>
// Show the image of a hovered point of the latent map (its PNG is the point's customdata).
(() => {
  const box = document.createElement("div");
  box.id = "latent-hover";
  box.style.cssText = "position:fixed;display:none;z-index:1000;pointer-events:none;background:#fff;" +
    "border:1px solid #888;padding:4px;box-shadow:0 2px 8px rgba(0,0,0,.3);font:12px sans-serif;text-align:center";
  box.innerHTML = '<img style="width:112px;height:112px;image-rendering:pixelated;display:block"><div></div>';
  const attach = (gd) => {
    if (gd._lsgmHover || !gd.on) return;
    gd._lsgmHover = true;
    gd.on("plotly_hover", (ev) => {
      const p = ev.points && ev.points[0];
      if (!p || !p.customdata) return;
      if (!box.isConnected) document.body.appendChild(box);
      box.querySelector("img").src = p.customdata;
      box.querySelector("div").textContent = p.text || "";
      const e = ev.event || {clientX: 0, clientY: 0};
      box.style.left = (e.clientX + 24) + "px";
      box.style.top = Math.max(0, e.clientY - 140) + "px";
      box.style.display = "block";
    });
    gd.on("plotly_unhover", () => { box.style.display = "none"; });
  };
  new MutationObserver(() => document.querySelectorAll("#latent-map .js-plotly-plot").forEach(attach))
    .observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""


def build(ctx: Context, picker: gr.Dropdown, demo: gr.Blocks) -> None:
    maps = ctx.services.setdefault("latent_maps", LatentMaps(ctx))
    with gr.Row():
        dataset = gr.Dropdown([*CLASS_NAMES, OWN_IMAGES], value="mnist", label="Test images")
        points = gr.Slider(200, MAX_POINTS, value=2000, step=100, label="Points", elem_id="latent-points",
                           info="5,000 ship with the app; up to 10,000 with a data folder")
        samples = gr.Slider(0, MAX_SAMPLES, value=200, step=10, label="Model samples to project",
                            elem_id="latent-samples")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
    with gr.Row():
        go = gr.Button("Compute map", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    stats = gr.Markdown(elem_id="latent-stats")
    plot = gr.Plot(label="Latent map (hover a point to see its image)", elem_id="latent-map")
    download = gr.DownloadButton("Download coordinates (CSV)")

    @user_errors
    def run(model_id, dataset, points, samples, seed, request: gr.Request, progress=gr.Progress()):
        one_of("test images", dataset, [*CLASS_NAMES, OWN_IMAGES])
        n_samples = integer("model samples", samples, 0, MAX_SAMPLES)
        for out in maps.compute(model_id, dataset, integer("points", points, 200, MAX_POINTS), n_samples,
                                integer("seed", seed, 0, 2**31 - 1), ctx.cancellations.checker(request), progress):
            text = (f"**Linear probe on {out['space']}: {out['accuracy']:.1%}** test accuracy (logistic regression, "
                    f"trained on 80% of the {out['n']} images, tested on the rest; {out['classes']} classes) · "
                    f"images from the {out['source']}" + (" · from the cache" if out["cached"] else "")
                    + (f" · {PLACING.format(n_samples)}" if out["partial"] else ""))
            # the CSV of a partial map would lack the samples: the button keeps its file until the whole one
            yield out["figure"], text, gr.skip() if out["partial"] else ctx.outputs.text(out["csv"], "latent-map", ".csv")

    event = go.click(run, [picker, dataset, points, samples, seed], [plot, stats, download],
                     api_name="latent_map", **SLOW)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)

    def default_dataset(model_id):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip()
        trained_on = model.config["data"]["dataset"]
        return OWN_IMAGES if trained_on.startswith("folder:") else shown_test_set(trained_on)

    gr.on([picker.change, demo.load], default_dataset, picker, dataset, api_visibility="private")
