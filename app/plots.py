"""Plotly figures of the app: latent paths, solver step sizes, the latent map, training curves."""
from __future__ import annotations

# plotly first imports narwhals.stable.v1 (and through it v2) when it builds its first figure, sklearn
# imports narwhals.stable.v2 when the first map is fitted: two request threads doing both at once
# deadlocked on Python's import locks, so it is imported once here, at start-up.
import narwhals.stable.v1  # noqa: F401
import numpy as np
import plotly.graph_objects as go

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), height=420)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `points` projected on their first two principal axes, and those axes' variance shares."""
    centred = points - points.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max((s**2).sum(), 1e-12)
    k = min(2, vt.shape[0])
    proj = centred @ vt[:k].T
    if k < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - k)))
    return proj, np.pad(share[:k], (0, 2 - k))


def latent_paths(zt: np.ndarray, times: np.ndarray) -> go.Figure:
    """z_t of several samples over time [T, N, D], as paths in one shared 2-D PCA projection."""
    t_, n, _ = zt.shape
    proj, share = pca_2d(zt.reshape(t_ * n, -1))
    proj = proj.reshape(t_, n, 2)
    fig = go.Figure()
    for i in range(n):
        fig.add_trace(go.Scatter(
            x=proj[:, i, 0], y=proj[:, i, 1], mode="lines+markers", name=f"sample {i}",
            line=dict(color=_PALETTE[i % 10]),
            marker=dict(size=7, color=times, colorscale="Viridis", cmin=0, cmax=1,
                        showscale=i == 0, colorbar=dict(title="t")),
            hovertemplate="t=%{customdata:.3f}<extra>sample " + str(i) + "</extra>", customdata=times))
    fig.update_layout(title="Latent path z_t from t=1 (noise) to t≈0 (data), PCA of all steps",
                      xaxis_title=f"PC 1 ({share[0]:.0%})", yaxis_title=f"PC 2 ({share[1]:.0%})",
                      legend=dict(orientation="h", y=-0.2), **_LAYOUT)
    return fig


def step_sizes(step_times: list[float], sizes: list[float], nfe: int, solver: str) -> go.Figure:
    fig = go.Figure(go.Scatter(x=step_times, y=sizes, mode="lines+markers", name="step size",
                               hovertemplate="t=%{x:.4f}<br>step %{y:.3g}<extra></extra>"))
    fig.update_layout(title=f"Solver steps: {len(sizes)} steps, {nfe} network evaluations ({solver})",
                      xaxis_title="t at the step", yaxis_title="step size |Δt|", yaxis_type="log",
                      xaxis_autorange="reversed", **_LAYOUT)
    return fig


def latent_map(data_xy: np.ndarray, labels: np.ndarray, class_names: list[str], data_thumbs: list[str],
               sample_xy: np.ndarray, sample_thumbs: list[str], title: str) -> go.Figure:
    """UMAP coordinates of real images by class, and the model's samples as black crosses.

    Each point carries its image (a PNG data URI) in customdata; the page's script shows it on hover.
    SVG markers rather than WebGL: they draw in every browser, GPU or not, and 10,000 points stay quick.
    """
    fig = go.Figure()
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            fig.add_trace(go.Scatter(
                x=data_xy[idx, 0], y=data_xy[idx, 1], mode="markers", name=name,
                marker=dict(size=4, color=_PALETTE[c % 10], opacity=0.7),
                customdata=[data_thumbs[i] for i in idx], text=[f"{name} (test image {i})" for i in idx],
                hovertemplate="%{text}<extra></extra>"))
    if len(sample_xy):
        fig.add_trace(go.Scatter(
            x=sample_xy[:, 0], y=sample_xy[:, 1], mode="markers", name="model samples",
            marker=dict(size=7, color="black", symbol="x"), customdata=sample_thumbs,
            text=[f"sample {i}" for i in range(len(sample_xy))], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="UMAP 1", yaxis_title="UMAP 2", hovermode="closest",
                      **{**_LAYOUT, "height": 560})
    return fig


def training_curves(records: list[dict], title: str) -> go.Figure:
    fig = go.Figure()
    steps = [r["step"] for r in records]
    for key in ("loss", "nelbo", "prior_loss"):
        ys = [r.get(key) for r in records]
        if any(y is not None for y in ys):
            fig.add_trace(go.Scatter(x=steps, y=ys, mode="lines", name=key))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="nats per image", **_LAYOUT)
    return fig
