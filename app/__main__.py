"""python -m app: serve the LSGM explorer on 127.0.0.1 and open it in the browser.

    python -m app [--checkpoint PATH] [--port P] [--host H] [--no-browser] [--device D] [--data-dir DIR]
                  [--runtime auto|torch|onnxruntime]

The model picker lists checkpoints/ (the shipped models; checkpoints/DEFAULT names the default)
and the runs trained from the app (runs/app/). Nothing is fetched from the internet.
"""
import argparse
import logging
import os
import sys
import threading
import time
import webbrowser
from pathlib import Path

START = time.perf_counter()
# before gradio is imported: it reads this at import time
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv=None) -> argparse.Namespace:
    from .paths import CHECKPOINTS, RUNS

    ap = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="the model to show first (a checkpoint or run folder)")
    ap.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app "
                         "to your network, without any login)")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the best available)")
    ap.add_argument("--data-dir", type=Path,
                    help="MNIST / Fashion-MNIST folder, for training and for latent maps of more than the "
                         "5,000 shipped test images (default: $LSGM_DATA_DIR if set)")
    ap.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
                    help="what runs the distilled student's networks: onnxruntime (CPU only; a 1-step sample "
                         "about 1.5x as fast there, the same images within 1e-4) or torch; auto (default): "
                         "onnxruntime on a CPU where it is installed, else torch")
    ap.add_argument("--checkpoints-dir", type=Path, default=CHECKPOINTS, help=f"shipped models (default {CHECKPOINTS})")
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help=f"runs trained from the app (default {RUNS})")
    return ap.parse_args(argv)


def warm_up(ctx) -> None:
    """In the background, at low priority: load the default model, run one tiny sample, and the
    tabs' own warm-ups (UMAP's compilation), so the first clicks do not pay for it."""
    from lsgm_core import solvers
    from lsgm_core.runtime import student_on

    from .solver_controls import DEFAULT_SOLVER, LOG_TOL_MAX, solver_args
    from .tabs import TABS

    log = logging.getLogger("app")
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: this thread only
    except (AttributeError, OSError):
        pass
    try:
        model_id = ctx.registry.default_id()
        if model_id:
            cheapest = solver_args(DEFAULT_SOLVER, LOG_TOL_MAX, LOG_TOL_MAX, 2)  # 2 steps or the loosest tolerance
            model = ctx.registry.load(model_id)
            solvers.sample(model, 1, DEFAULT_SOLVER, **cheapest)
            student_on(model, ctx.runtime)  # its conversion to ONNX Runtime takes about 2 s
        for tab in TABS:
            if tab.warm_up is not None:
                tab.warm_up()
    except Exception:  # warming is an optimisation: the first request will report any real problem
        log.exception("warm-up failed")
    log.info("warm-up done after %.1f s", time.perf_counter() - START)


def app_runtime(choice: str, device: str) -> str:
    """--runtime resolved: auto is onnxruntime on a CPU where it is installed, else torch."""
    from lsgm_core.runtime import available, check_runtime

    if choice == "auto":
        return "onnxruntime" if device == "cpu" and available("onnxruntime") else "torch"
    if choice == "onnxruntime" and device != "cpu":
        raise ValueError(f"--runtime onnxruntime runs on the CPU, and the app's device is {device}: add --device cpu "
                         "or use --runtime torch")
    check_runtime(choice)
    return choice


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per internal request otherwise
    from lsgm_core import CheckpointError
    from lsgm_core.device import pick_device

    from .common import Context
    from .images import Outputs
    from .models import Registry
    from .runs import RunManager
    from .ui import build_app, launch_options

    try:
        device = str(pick_device(args.device))
        runtime = app_runtime(args.runtime, device)
        registry = Registry(args.checkpoints_dir, args.runs_dir, args.checkpoint, device)
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or (Path(os.environ["LSGM_DATA_DIR"]) if os.environ.get("LSGM_DATA_DIR") else None)
    ctx = Context(registry, Outputs(), data_dir, device, runtime=runtime)
    ctx.services["runs"] = RunManager(args.runs_dir, data_dir, args.device)
    demo = build_app(ctx)
    try:
        _, url, _ = demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True,
                                **launch_options(ctx))
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port or 'a port from 7860'}: {e}", file=sys.stderr)
        return 2
    print(f"LSGM explorer: {url}  (ready in {time.perf_counter() - START:.1f} s; Ctrl-C to quit)", flush=True)
    if registry.default_id() is None:
        print("no model in checkpoints/ yet: train one in the Train tab", flush=True)
    threading.Thread(target=warm_up, args=(ctx,), daemon=True, name="warm-up").start()
    if not args.no_browser:
        webbrowser.open(url)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
