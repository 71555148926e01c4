"""Checkpoints: safetensors for tensors, JSON for config and metrics; nothing is ever unpickled.

A checkpoint is a folder:
    config.json          the resolved run configuration
    model.safetensors    all weights of the model
    ema.safetensors      exponential moving average of the prior's weights (stage 2)
    train.safetensors    optimiser moments, to resume training (optional; optimizers_to_tensors)
    meta.json            step, metrics, optimiser hyper-parameters, SHA-256 of every file; written last

A training run folder holds checkpoints/step-XXXXXXXX/ folders and a `latest` file naming the
newest complete one; both the folder and the pointer are replaced atomically, so a run killed at
any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import atomic

FORMAT = "lsgm-checkpoint"
VERSION = 1
PARTS = ("model", "ema", "train")
FILES = ("config.json", *(f"{part}.safetensors" for part in PARTS))  # what meta.json may list


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged, or does not fit the model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(model, skip: str = "student.") -> str:
    """SHA-256 of the model's weights (names, dtypes, shapes and values, in name order) but those
    under `skip`: what a figure of the model itself depends on, which a new distilled student leaves
    as it was (an evaluation's --resume record stays valid for the checkpoint with that student)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(skip):
            h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict | None = None) -> Path:
    """Write a checkpoint folder atomically: built beside `path`, then renamed into place.

    `tensors` maps a part name (model, ema, train) to a flat dict of tensors. On any failure the
    folder being built goes and `path` keeps what it held; a full disk raises atomic.DiskFullError
    naming the folder the checkpoint was saved in.
    """
    path = Path(path)
    for part in tensors:
        if part not in PARTS:
            raise ValueError(f"unknown checkpoint part {part!r}; parts are {PARTS}")
    tmp = atomic.temp_path(path, "tmp")
    try:
        tmp.mkdir(parents=True)
        files = {}
        for part, state in tensors.items():
            name = f"{part}.safetensors"
            flat = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            atomic.atomic_write(tmp / name, lambda f: save_file(flat, str(f)))
            files[name] = _sha256(tmp / name)
        atomic.write_json(tmp / "config.json", config)
        files["config.json"] = _sha256(tmp / "config.json")
        atomic.write_json(tmp / "meta.json", {**(meta or {}), "format": FORMAT, "version": VERSION, "files": files})
        if path.exists():
            # swap: the old folder is moved aside first, so `path` always names a whole checkpoint
            # or (for an instant) nothing; resolve_checkpoint falls back to the aside copy
            aside = atomic.temp_path(path, "old")
            os.rename(path, aside)
            os.rename(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, path)
        atomic.fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise atomic.full_disk_error(e, path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_run_checkpoint(run_dir: str | Path, step: int, config: dict,
                        tensors: dict[str, dict[str, torch.Tensor]], meta: dict, keep: int = 2) -> Path:
    """Save checkpoints/step-N in a run folder, point `latest` at it, prune older ones."""
    run_dir = Path(run_dir)
    name = f"step-{step:08d}"
    path = save_checkpoint(run_dir / "checkpoints" / name, config, tensors, {**meta, "step": step})
    atomic.write_text(run_dir / "latest", name + "\n")
    old = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.name != name)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    # what saves killed midway left behind (one writer per run folder: none of it is in use)
    for p in (run_dir / "checkpoints").glob(".step-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(".latest.*"):
        p.unlink(missing_ok=True)
    return path


def optimizers_to_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimisers' states as flat tensors named <optimiser>.<parameter index>.<field> (for
    train.safetensors), and their parameter groups (plain numbers, for meta.json)."""
    tensors, groups = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, fields in sd["state"].items():
            for field, value in fields.items():
                tensors[f"{name}.{idx}.{field}"] = torch.as_tensor(value)
    return tensors, groups


def optimizers_from_tensors(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                            groups: dict, checkpoint: str, keep: tuple[str, ...] = ()) -> None:
    """Load what optimizers_to_tensors saved (in the folder `checkpoint`, named in errors) into
    `optimizers`; the keys `keep` of their own parameter groups win over the saved ones (settings
    that follow the config, not the file)."""
    for name, opt in optimizers.items():
        if name not in groups:
            raise CheckpointError(f"{checkpoint}/meta.json: has no parameter groups of the {name} optimiser "
                                  f"(only of: {', '.join(groups) or 'none'})")
        state = {}
        for key, value in tensors.items():
            if key.startswith(f"{name}."):
                idx, _, field = key[len(name) + 1:].partition(".")
                if not idx.isdigit() or not field:
                    raise CheckpointError(f"{checkpoint}/train.safetensors: tensor {key[:80]!r} is not named "
                                          "<optimiser>.<parameter index>.<field>")
                state.setdefault(int(idx), {})[field] = value
        current = [{k: g[k] for k in keep} for g in opt.param_groups]
        opt.load_state_dict({"state": state, "param_groups": [{**g, **c} for g, c in zip(groups[name], current)]})


def _aside(path: Path) -> Path | None:
    """The whole copy of `path` that a save killed between its two renames left aside, if any."""
    for aside in sorted(path.parent.glob(f".{path.name}.old-*")):
        if (aside / "meta.json").is_file():
            return aside
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (whose `latest` is followed)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if (path / "latest").is_file():
        name = (path / "latest").read_text(errors="replace").strip()
        if not name or Path(name).name != name or name.startswith("."):
            raise CheckpointError(f"run folder {path}: `latest` must name a folder of {path / 'checkpoints'}, "
                                  f"not {name[:80]!r}")
        target = path / "checkpoints" / name
        if (target / "meta.json").is_file():
            return target
        # a save of the same step was killed between its two renames
        aside = _aside(target)
        if aside is None:
            raise CheckpointError(f"run folder {path}: `latest` names {name}, which is missing or incomplete "
                                  f"under {path / 'checkpoints'}")
        return aside
    aside = _aside(path)
    if aside is not None:
        return aside  # a save was interrupted between its two renames
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} is not a checkpoint: it has neither meta.json (a checkpoint folder) "
                          "nor `latest` (a training run folder)")


def read_checkpoint(path: str | Path, parts=("model", "ema")) -> tuple[dict, dict, dict[str, dict]]:
    """(config, meta, {part: tensors}) of a checkpoint, every file checked against its SHA-256."""
    path = resolve_checkpoint(path)
    meta = _read_json(path / "meta.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'meta.json'}: not an {FORMAT} file (format={meta.get('format')!r})")
    files = meta.get("files", {})
    if not isinstance(files, dict) or not isinstance(meta.get("version", 0), int):
        raise CheckpointError(f"{path / 'meta.json'}: malformed (`files` must map file names to SHA-256 "
                              "digests, `version` must be a whole number)")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['version']} is newer than this "
                              f"lsgm_core understands ({VERSION}); upgrade lsgm_core")
    for name, digest in files.items():
        if name not in FILES:
            raise CheckpointError(f"{path / 'meta.json'}: lists {str(name)[:80]!r}, which is not a checkpoint "
                                  f"file ({', '.join(FILES)})")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: file missing from the checkpoint")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: damaged (SHA-256 does not match meta.json); "
                                  "the file was truncated or modified — use another checkpoint")
    config = _read_json(path / "config.json")
    tensors = {}
    for part in parts:
        name = f"{part}.safetensors"
        if name not in files:
            continue
        try:
            tensors[part] = load_file(str(path / name))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path / name}: not a readable safetensors file ({e})") from None
    meta["path"] = str(path)
    return config, meta, tensors


def _read_json(f: Path) -> dict:
    try:
        obj = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: file missing from the checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return obj


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that names the file and the mismatched keys or shapes."""
    check_fit(module, state, source)
    module.load_state_dict(state)


def check_fit(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A CheckpointError naming the file and the mismatched keys or shapes, unless `state` fits `module`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
            f"shape mismatch: {'; '.join(shapes[:3])}" if shapes else ""]))
        raise CheckpointError(f"{source}: weights do not fit this model architecture ({detail}); "
                              "check that config.json matches the weights")


def load_model(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Build the model of a checkpoint and load its weights (the prior's EMA weights by default).

    Returns the model in eval mode; `model.meta` holds the checkpoint's step and metrics.
    """
    from .model import build_model

    config, meta, tensors = read_checkpoint(path)
    if "model" not in tensors:
        raise CheckpointError(f"{meta['path']}: has no model.safetensors")
    try:
        with torch.device("meta"):  # no memory yet: a config.json of a giant model allocates nothing
            check_fit(build_model(config), tensors["model"], f"{meta['path']}/model.safetensors")
        model = build_model(config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta['path']}/config.json: cannot build a model from it ({e})") from None
    load_state(model, tensors["model"], f"{meta['path']}/model.safetensors")
    if use_ema and "ema" in tensors:
        load_state(model.prior, tensors["ema"], f"{meta['path']}/ema.safetensors")
    model.meta = meta
    # channels-last convolution weights make oneDNN (CPU) and cuDNN skip a layout reorder per
    # convolution: about 20% less time per network evaluation at the sizes sampling uses
    return model.to(device, memory_format=torch.channels_last).eval()


def derived_meta(meta: dict, metrics: dict | None, source_key: str) -> dict:
    """The meta.json of a checkpoint made from another: its record without the file list, format or
    optimiser state, `metrics` merged into its metrics, and where it came from under `source_key`."""
    keep = {k: v for k, v in meta.items() if k not in ("files", "format", "version", "path", "optimizers")}
    keep["metrics"] = {**meta.get("metrics", {}), **(metrics or {})}
    keep[source_key] = meta["path"]
    return keep


def export_checkpoint(src: str | Path, dst: str | Path, metrics: dict | None = None,
                      fold_ema: bool = False) -> Path:
    """Copy a checkpoint for shipping: weights and EMA only (no optimiser state), metrics merged.

    `fold_ema` writes the prior's EMA weights into model.safetensors and drops ema.safetensors:
    the same model for `load_model` at about half the size, without the raw training weights."""
    config, meta, tensors = read_checkpoint(src, parts=("model", "ema"))
    keep = derived_meta(meta, metrics, "exported_from")
    if fold_ema and "ema" in tensors:
        ema = tensors.pop("ema")
        tensors["model"] = {**tensors["model"], **{f"prior.{k}": v for k, v in ema.items()}}
        keep["ema_folded"] = True
    return save_checkpoint(dst, config, tensors, keep)
