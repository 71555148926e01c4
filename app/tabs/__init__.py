"""The app's tabs, in the page's order. Adding a tab is a module with a `build` and one entry in TABS.

Each tab's `build(ctx, picker, demo)` draws its controls inside its gr.Tab and registers its
events and named API endpoints; the page gathers the CSS and <head> HTML the tabs ask for, and
the server runs their warm-ups in the background at start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lsgm_core import latent_map as latent_analysis

from . import compare, explore, interpolate, latent_map, sample, train, trajectory


@dataclass(frozen=True)
class TabSpec:
    name: str  # the gr.Tab's id (also the prefix of its elements' ids)
    label: str  # the tab's title on the page
    build: Callable  # build(ctx, picker, demo)
    css: str = ""  # page CSS for the tab's elements
    head: str = ""  # HTML for the page's <head> (scripts the tab needs)
    warm_up: Callable[[], None] | None = None  # run once in the background at start, so a first click is quick


# 28x28 images are enlarged without blur (image-rendering), the Interpolate inputs shown at a visible size
TABS = [
    TabSpec("sample", "Sample", sample.build, css="#sample-grid img { image-rendering: pixelated; }"),
    TabSpec("trajectory", "Trajectory", trajectory.build, css="#trajectory-frames img { image-rendering: pixelated; }"),
    TabSpec("interpolate", "Interpolate", interpolate.build,
            css="#interp-strip img { image-rendering: pixelated; }\n#interp-a img, #interp-b img "
                "{ image-rendering: pixelated; min-height: 140px; object-fit: contain; }"),
    TabSpec("latent-map", "Latent map", latent_map.build, head=latent_map.HOVER_JS, warm_up=latent_analysis.warm_up),
    TabSpec("explore", "Explore", explore.build),
    TabSpec("compare", "Compare", compare.build,
            css="#compare-model-grid img, #compare-baseline-grid img { image-rendering: pixelated; }"),
    TabSpec("train", "Train", train.build),
]
