"""lsgm_core.fid_plot: the SVG's points sit where their time and FID put them on log axes."""
import math
import xml.etree.ElementTree as ET

import pytest

from lsgm_core.fid_plot import fid_plot_svg, write_fid_plot

NS = {"s": "http://www.w3.org/2000/svg"}
PANELS = {"16 samples": {"latent": [(0.5, 3.0, "fast:20"), (0.1, 20.0, "fast:5"), (4.7, 2.0, "ode:1e-5")],
                         "pixel": [(6.0, 5.0, "fast:20"), (76.0, 4.0, "ode:1e-5")]},
          "256 samples": {"latent": [(6.8, 3.0, "fast:20")], "pixel": [(143.0, 5.0, "fast:20")]}}


def _circles(root, model):
    return [(float(c.get("cx")), float(c.get("cy")), float(c.get("data-seconds")), float(c.get("data-fid")))
            for c in root.iter("{%s}circle" % NS["s"]) if c.find("s:title", NS).text.startswith(model + " ")]


def test_points_are_placed_on_log_axes_a_line_per_model_and_panel():
    root = ET.fromstring(fid_plot_svg(PANELS))
    lines = root.findall("s:polyline", NS)
    assert [l.get("data-model") for l in lines] == ["latent", "pixel", "latent", "pixel"]
    # each line visits its points in order of time
    first = [tuple(map(float, xy.split(","))) for xy in lines[0].get("points").split()]
    assert [x for x, _ in first] == sorted(x for x, _ in first) and len(first) == 3
    pts = _circles(root, "latent")[:3] + _circles(root, "pixel")[:2]  # the 16-sample panel
    (x1, y1, s1, f1), (x2, y2, s2, f2) = pts[0], pts[1]
    for (xa, ya, sa, fa) in pts[2:]:
        # log axes: the ratio of screen distances equals the ratio of log distances
        assert (xa - x1) / (x2 - x1) == pytest.approx(math.log(sa / s1) / math.log(s2 / s1), abs=0.01)
        assert (ya - y1) / (y2 - y1) == pytest.approx(math.log(fa / f1) / math.log(f2 / f1), abs=0.01)
    assert x2 > x1 and y2 > y1  # fast:20 (0.5 s, FID 3) right of and below fast:5 (0.1 s, FID 20)


def test_bad_points_and_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive time and FID"):
        fid_plot_svg({"16": {"m": [(0.0, 3.0, "fast:5")]}})
    with pytest.raises(ValueError, match="nothing to plot"):
        fid_plot_svg({})
    with pytest.raises(ValueError, match=r"\.svg"):
        write_fid_plot(tmp_path / "plot.png", PANELS)
    assert ET.parse(write_fid_plot(tmp_path / "plot.svg", PANELS)).getroot().tag.endswith("svg")
