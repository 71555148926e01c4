"""FID against sampling time, drawn as an SVG file: a panel per number of samples, a line per model,
a point per solver setting, both axes logarithmic.

SVG because it needs no plotting library, renders in a README and in a browser, and stays a small
text file in the repository. `bench sampling --fid N --plot FILE.svg` writes one.
"""
from __future__ import annotations

import math
from html import escape
from pathlib import Path

from .atomic import write_text

PANEL_W, PANEL_H = 440, 320
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 16, 34, 46
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _log_range(values: list[float]) -> tuple[float, float]:
    """log10 bounds around `values`, padded so that no point sits on the frame."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    pad = max(0.08 * (hi - lo), 0.1)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times the powers of ten inside [10^lo, 10^hi]; only the decades where that is too many."""
    def inside(mantissas):
        return [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas
                if lo <= math.log10(m * 10.0 ** e) <= hi]
    ticks = inside((1, 2, 5))
    return ticks if len(ticks) <= 8 else inside((1,))


def _label(v: float) -> str:
    return f"{v:g}" if v >= 1e-3 else f"{v:.0e}"


def _panel(x0: float, title: str, lines: dict[str, list[tuple[float, float, str]]], colours: dict[str, str]) -> list[str]:
    points = [p for pts in lines.values() for p in pts]
    xlo, xhi = _log_range([p[0] for p in points])
    ylo, yhi = _log_range([p[1] for p in points])
    left, top = x0 + MARGIN_L, MARGIN_T
    w, h = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B

    def xy(seconds: float, fid: float) -> tuple[float, float]:
        return (left + (math.log10(seconds) - xlo) / (xhi - xlo) * w,
                top + (yhi - math.log10(fid)) / (yhi - ylo) * h)

    out = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#444"/>',
           f'<text x="{left + w / 2}" y="{top - 12}" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left + w / 2}" y="{PANEL_H - 8}" text-anchor="middle">sampling time, s (log)</text>',
           f'<text transform="translate({x0 + 14},{top + h / 2}) rotate(-90)" text-anchor="middle">FID (log)</text>']
    for v in _ticks(xlo, xhi):
        x = xy(v, 10 ** yhi)[0]
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{_label(v)}</text>')
    for v in _ticks(ylo, yhi):
        y = xy(10 ** xlo, v)[1]
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(v)}</text>')
    for name, pts in lines.items():
        pts = sorted(pts)
        coords = [xy(s, f) for s, f, _ in pts]
        colour = colours[name]
        out.append(f'<polyline class="model" data-model="{escape(name)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.5" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>')
        for (x, y), (s, f, setting) in zip(coords, pts):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" data-seconds="{s:g}" '
                       f'data-fid="{f:g}"><title>{escape(name)} {escape(setting)}: {s:.3g} s, FID {f:.3g}</title></circle>'
                       f'<text x="{x + 5:.1f}" y="{y - 5:.1f}" font-size="10" fill="{colour}">{escape(setting)}</text>')
    return out


def fid_plot_svg(panels: dict[str, dict[str, list[tuple[float, float, str]]]]) -> str:
    """The SVG text: `panels` maps a panel's title to {model name: [(seconds, FID, setting), ...]}."""
    if not panels or not all(panels.values()):
        raise ValueError("nothing to plot: give at least one panel with at least one model")
    for title, lines in panels.items():
        for name, pts in lines.items():
            if not pts or any(not (s > 0 and f > 0) for s, f, _ in pts):
                raise ValueError(f"{title}, {name}: every point needs a positive time and FID (got {pts})")
    names = list(dict.fromkeys(n for lines in panels.values() for n in lines))
    colours = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    width, height = PANEL_W * len(panels), PANEL_H + 22 * len(names)
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (title, lines) in enumerate(panels.items()):
        body += _panel(i * PANEL_W, title, lines, colours)
    for i, n in enumerate(names):
        y = PANEL_H + 8 + 22 * i
        body.append(f'<line x1="{MARGIN_L}" y1="{y}" x2="{MARGIN_L + 24}" y2="{y}" stroke="{colours[n]}" stroke-width="2"/>'
                    f'<text x="{MARGIN_L + 30}" y="{y + 4}">{escape(n)}</text>')
    return "\n".join(body + ["</svg>", ""])


def write_fid_plot(path: str | Path, panels: dict[str, dict[str, list[tuple[float, float, str]]]]) -> Path:
    """Write fid_plot_svg(panels) to `path` atomically."""
    if Path(path).suffix.lower() != ".svg":
        raise ValueError(f"the plot is an SVG file: give a path ending in .svg (got {path})")
    return write_text(path, fid_plot_svg(panels))
