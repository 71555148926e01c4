"""Latent map tab: UMAP of the encoder's z0 means of real test images, coloured by class, with the
model's own samples projected into the same map, a linear probe on z0, and the coordinates as CSV.

Real images come from the data folder (--data-dir) when it holds the data set, else from the
5,000 shipped in assets/latent/, so the map works offline on a fresh machine.
"""
import base64
import io
import threading
from collections import OrderedDict

import gradio as gr
import numpy as np
import torch

from lsgm_core import DataError, ImageDataset, load_dataset, solvers

from .. import plots
from ..common import SLOW, Context, integer, one_of, try_load, user_errors
from ..images import to_pil
from ..paths import ASSETS, CLASS_NAMES, shown_test_set
from .sample import STEPS

MAX_POINTS = 10_000
MAX_SAMPLES = 1000
PCA_DIMS = 50  # UMAP on the top principal components: the usual speed-up, little change to the map
_CACHE_SIZE = 8


def _reducer(n_neighbors: int = 15, **kwargs):
    """UMAP with 200 epochs, its own choice for large data, rather than 500 below 10,000 points:
    the map settles well before, at 2.5 times less cost."""
    import umap

    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, n_epochs=200, **kwargs)


def warm_up() -> None:
    """Import UMAP and compile its numba kernels (fit and transform) on toy problems: the first
    real map would otherwise spend 30-90 s compiling. First the exact neighbour search that UMAP
    uses below 4,096 points (the default maps), then the approximate one (pynndescent) it uses above."""
    rng = np.random.default_rng(0)
    for approximate in (False, True):
        fitted = _reducer(5, force_approximation_algorithm=approximate).fit(
            rng.normal(size=(300, 8)).astype(np.float32))
        fitted.transform(rng.normal(size=(10, 8)).astype(np.float32))


def _data_uri(image: torch.Tensor) -> str:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def space_name(model) -> str:
    """What the map places: the encoder's z0 means, or for the pixel baseline (no encoder) the pixels."""
    return "z0 means" if model.kind == "lsgm" else "pixels (the pixel-space model has no encoder)"

class LatentMaps:
    """Maps computed so far (the most recent few), and the real images with their hover thumbnails."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._maps: OrderedDict[tuple, dict] = OrderedDict()
        self._real: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def real(self, dataset: str, pad: int) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
        """(images uint8 [N, 1, 28 + 2 pad, ...], labels, thumbnails, source) of a test set."""
        key = (dataset, pad)
        if key not in self._real:
            images, labels, source = None, None, "shipped subset (assets/latent)"
            if self.ctx.data_dir is not None:
                try:
                    ds = load_dataset(dataset, "test", self.ctx.data_dir, download=False)
                    c = ds.crop
                    images = ds.images[..., c:ds.images.shape[-2] - c, c:ds.images.shape[-1] - c]
                    labels, source = ds.labels, f"data folder {self.ctx.data_dir}"
                except DataError:
                    pass  # no such data in the folder: the shipped subset will do
            if images is None:
                with np.load(ASSETS / "latent" / f"{dataset}-test.npz") as f:
                    images = torch.from_numpy(f["images"])[:, None]
                    labels = torch.from_numpy(f["labels"].astype(np.int64))
            thumbs = [_data_uri(im.float() / 255) for im in images[:MAX_POINTS]]
            padded = torch.nn.functional.pad(images, (pad,) * 4)
            self._real[key] = (padded, labels, thumbs, source)
        return self._real[key]

    def compute(self, model_id: str, dataset: str, n: int, n_samples: int, seed: int, check, progress) -> dict:
        entry = self.ctx.registry.entry(model_id)
        key = (str(entry.path), (entry.path / "meta.json").stat().st_mtime, dataset, n, n_samples, seed)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return {**self._maps[key], "cached": True}
        model = self.ctx.registry.load(model_id)
        if model.image_size != 32:
            raise ValueError(f"the latent map uses 28x28 test images padded to 32x32; this model takes "
                             f"{model.image_size}x{model.image_size} images")
        progress(0.05, desc="encoding the test images")
        images, labels, thumbs, source = self.real(dataset, model.crop)
        n = min(n, len(images))
        # a model trained on binarised MNIST has only seen binary pixels: show it the same
        binarize = model.config["data"]["dataset"] == "binarized-mnist"
        data = ImageDataset(images[:n], labels[:n], binarize=binarize)
        gen = torch.Generator().manual_seed(seed)
        mus = []
        with torch.inference_mode():
            for idx in torch.arange(n).split(500):
                x, _ = data.batch(idx, generator=gen)
                x = x.expand(-1, model.in_channels, -1, -1).to(self.ctx.device)
                mus.append(model.encode(x)[0].flatten(1).float().cpu())
                check()
            z_real = torch.cat(mus).numpy()
            z_fake, fake_thumbs = np.zeros((0, z_real.shape[1]), np.float32), []
            if n_samples:
                progress(0.3, desc=f"sampling {n_samples} images from the model")
                result = solvers.sample(model, n_samples, "fast", steps=STEPS["fast"], seed=seed,
                                        callback=lambda d: check())
                z_fake = result.z0.flatten(1).float().cpu().numpy()
                fake_thumbs = [_data_uri(im) for im in result.images]
        y = labels[:n].numpy()
        space = space_name(model)
        progress(0.45, desc=f"linear probe on {space}")
        accuracy = self.probe(z_real, y)
        check()
        progress(0.6, desc=f"UMAP of {n} points")
        xy_real, xy_fake = self.umap(z_real, z_fake)
        names = CLASS_NAMES[dataset]
        title = f"UMAP of {space}: {n} {dataset} test images, {len(z_fake)} model samples (black x)"
        fig = plots.latent_map(xy_real, y, names, thumbs[:n], xy_fake, fake_thumbs, title)
        rows = ["kind,index,label,class,umap_x,umap_y"]
        rows += [f"data,{i},{y[i]},{names[y[i]]},{x:.5f},{v:.5f}" for i, (x, v) in enumerate(xy_real)]
        rows += [f"sample,{i},,,{x:.5f},{v:.5f}" for i, (x, v) in enumerate(xy_fake)]
        out = {"figure": fig, "accuracy": accuracy, "csv": "\n".join(rows) + "\n", "n": n, "source": source,
               "space": space}
        with self._lock:
            self._maps[key] = out
            while len(self._maps) > _CACHE_SIZE:
                self._maps.popitem(last=False)
        return {**out, "cached": False}

    @staticmethod
    def probe(z: np.ndarray, y: np.ndarray) -> float:
        """Test accuracy of a logistic regression on z0 means, trained on the first 80% of the images."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        cut = int(0.8 * len(z))
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
        clf.fit(z[:cut], y[:cut])
        return float(clf.score(z[cut:], y[cut:]))

    @staticmethod
    def umap(z_real: np.ndarray, z_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.decomposition import PCA

        pca = PCA(min(PCA_DIMS, *z_real.shape), random_state=0).fit(z_real)
        reducer = _reducer().fit(pca.transform(z_real))
        fake = reducer.transform(pca.transform(z_fake)) if len(z_fake) else np.zeros((0, 2))
        return reducer.embedding_, fake


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
        dataset = gr.Dropdown(list(CLASS_NAMES), value="mnist", label="Test images")
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
        one_of("test images", dataset, list(CLASS_NAMES))
        out = maps.compute(model_id, dataset, integer("points", points, 200, MAX_POINTS),
                           integer("model samples", samples, 0, MAX_SAMPLES), integer("seed", seed, 0, 2**31 - 1),
                           ctx.cancellations.checker(request), progress)
        csv = ctx.outputs.text(out["csv"], "latent-map", ".csv")
        text = (f"**Linear probe on {out['space']}: {out['accuracy']:.1%}** test accuracy (logistic regression, "
                f"trained on 80% of the {out['n']} images, tested on the rest; chance 10%) · "
                f"images from the {out['source']}" + (" · from the cache" if out["cached"] else ""))
        return out["figure"], text, csv

    event = go.click(run, [picker, dataset, points, samples, seed], [plot, stats, download],
                     api_name="latent_map", **SLOW)
    stop.click(ctx.cancellations.request, None, None, cancels=[event], api_visibility="private", queue=False)

    def default_dataset(model_id):
        model = try_load(ctx, model_id)
        if model is None:
            return gr.skip()
        return shown_test_set(model.config["data"]["dataset"])

    gr.on([picker.change, demo.load], default_dataset, picker, dataset, api_visibility="private")
