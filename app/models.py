"""The checkpoint registry behind the model picker.

Models are named by id, "<folder>/<name>": "checkpoints/<name>" for the shipped models and
"runs/<name>" for runs trained from the app. Ids come from listing those two folders and a
request can only pick one of the listed ids, so no path from a browser or an API call is ever
joined to a folder or opened: path traversal has nothing to work with.

Default model: `--checkpoint` if given; else the name written in checkpoints/DEFAULT; else the
first checkpoint in checkpoints/ by name; else the newest run.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from lsgm_core import CheckpointError, load_model
from lsgm_core.checkpoint import resolve_checkpoint
from lsgm_core.model import MODELS as MODEL_KINDS

DEFAULT_FILE = "DEFAULT"


@dataclass(frozen=True)
class Entry:
    id: str
    path: Path  # the checkpoint folder itself (a run's `latest` already followed)
    label: str
    kind: str | None = None  # meta.json's model kind (lsgm_core.model.MODELS); None where it is unreadable


def _describe(path: Path) -> tuple[str, str | None] | None:
    """("lsgm, stage 2, step 5000", kind) from meta.json; None for a checkpoint that is not a model's
    (lsgm_core's feature classifiers, say) — the picker does not list those."""
    unreadable = ("unreadable meta.json", None)  # listed, so that picking it explains what is wrong
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return unreadable
    if not isinstance(meta, dict) or not isinstance(meta.get("kind", "lsgm"), str):
        return unreadable
    if meta.get("kind", "lsgm") not in MODEL_KINDS:
        return None
    parts = [meta.get("kind", "lsgm")]
    if meta.get("stage"):
        parts.append("prior stage" if meta["stage"] == "prior" else f"stage {meta['stage']}")
    if "step" in meta:
        parts.append(f"step {meta['step']}")
    return ", ".join(map(str, parts)), parts[0]


class Registry:
    """Lists the allowed checkpoints and keeps the most recently used models loaded."""

    def __init__(self, checkpoints_dir: Path, runs_dir: Path, extra: Path | None = None,
                 device: str = "cpu", keep_loaded: int = 3):
        self.roots = {"checkpoints": Path(checkpoints_dir), "runs": Path(runs_dir)}
        self.device = device
        self.keep_loaded = keep_loaded
        self._extra = None
        if extra is not None:
            path = resolve_checkpoint(extra).resolve()  # the user named it on the command line: trusted
            self._extra = next((e for e in self.entries() if e.path.resolve() == path), None) or \
                Entry(f"external/{Path(extra).resolve().name}", path, *(_describe(path) or ("not a model",)))
        self._models: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()

    def entries(self) -> list[Entry]:
        """Every loadable-looking checkpoint, rescanned on each call (runs appear while the app runs)."""
        found = []
        for prefix, root in self.roots.items():
            if not root.is_dir():
                continue
            children = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")]
            # runs newest first, so a run just trained from the app is easy to find
            children.sort(key=(lambda c: -c.stat().st_mtime) if prefix == "runs" else (lambda c: c.name))
            for child in children:
                try:
                    path = resolve_checkpoint(child)
                except CheckpointError:
                    continue  # e.g. a run that has not saved its first checkpoint yet
                described = _describe(path)
                if described is not None:
                    found.append(Entry(f"{prefix}/{child.name}", path, *described))
        if self._extra is not None and all(e.id != self._extra.id for e in found):
            found.insert(0, self._extra)
        return found

    def choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for a gr.Dropdown."""
        return [(f"{e.id} ({e.label})", e.id) for e in self.entries()]

    def default_id(self) -> str | None:
        entries = self.entries()
        if self._extra is not None:
            return self._extra.id
        pinned = self.roots["checkpoints"] / DEFAULT_FILE
        if pinned.is_file():
            wanted = f"checkpoints/{pinned.read_text().strip()}"
            if any(e.id == wanted for e in entries):
                return wanted
        candidates = [e for e in entries if e.id.startswith("checkpoints/")] or entries
        return candidates[0].id if candidates else None

    def entry(self, model_id: str) -> Entry:
        """The listed entry of `model_id`; anything else (paths, '..', unknown names) is refused."""
        entries = self.entries()
        for e in entries:
            if e.id == model_id:
                return e
        listed = ", ".join(e.id for e in entries) or "none; train one in the Train tab"
        raise ValueError(f"unknown model {str(model_id)[:80]!r}: pick one of the listed models ({listed})")

    def load(self, model_id: str):
        """The model of a listed checkpoint, loaded once and kept while recently used.

        A damaged checkpoint raises CheckpointError and leaves every loaded model as it was.
        """
        path = self.entry(model_id).path
        with self._lock:  # two requests for a new model load it once
            model = self._models.get(path)
            if model is None:
                model = load_model(path, self.device)
                self._models[path] = model
                while len(self._models) > self.keep_loaded:
                    self._models.popitem(last=False)
            self._models.move_to_end(path)
            return model
