"""The layers lean one way: the engine imports no UI. Every module of lsgm_core, imported in a fresh
interpreter, leaves gradio and the app unloaded; the app's benchmark is reached from lsgm_core.bench
only as a program of its own."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_no_module_of_the_engine_imports_the_app_or_gradio():
    code = ("import importlib, pkgutil, sys, lsgm_core\n"
            "names = [m.name for m in pkgutil.walk_packages(lsgm_core.__path__, 'lsgm_core.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'gradio')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    count, loaded = out.split(" ", 1)
    assert int(count) >= 20 and loaded.strip() == "[]", out


def test_bench_app_runs_the_apps_benchmark_as_a_program():
    out = subprocess.run([sys.executable, "-m", "lsgm_core.bench", "app", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("usage: python -m app.bench") and "--map-points" in out
