"""The sample grids shown in the README: 64 samples of each shipped model, seed 0.

    python tools/sample_grids.py [--solver fast --steps 20] [--out assets/samples]

The solver options are those of `python -m lsgm_core.sample` (any solver of the registry).

One PNG per checkpoint folder in checkpoints/ (the feature classifiers excepted), named after it.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from app.images import grid  # noqa: E402
from app.paths import ASSETS, CHECKPOINTS  # noqa: E402
from lsgm_core import load_model  # noqa: E402
from lsgm_core.sample import add_solver_args, solver_kwargs  # noqa: E402
from lsgm_core.solvers import sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_solver_args(ap)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--out", default=str(ASSETS / "samples"))
    args = ap.parse_args()
    kw = solver_kwargs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(CHECKPOINTS.iterdir()):
        if not (folder / "meta.json").is_file():
            continue
        model = load_model(folder)
        result = sample(model, args.num, args.solver, seed=0, **kw)
        grid(result.images, ncol=8).save(out / f"{folder.name}.png", optimize=True)
        print(json.dumps({"checkpoint": folder.name, "png": str(out / f"{folder.name}.png"), "nfe": result.nfe,
                          "seconds": round(result.seconds, 2)}))


if __name__ == "__main__":
    main()
