"""Faults and hostile files against the engine: SIGKILL at every moment of a checkpoint save, SIGKILL
during training then --resume, a full disk (ENOSPC) inside a save, and checkpoints built to run code
or to read outside their folder.

What must hold: `latest` always names a whole checkpoint whose SHA-256 sums verify (no partial
folder is ever picked up), a killed run resumes from its last checkpoint and ends bit for bit like
an uninterrupted one, a full disk gives an error naming the folder and leaves the previous
checkpoint as it was, and loading never executes code from a file: hostile files are refused with
an error naming the file.
"""
import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faults import SaveKiller, pickle_payload, rehash, torch_payload
from lsgm_core import checkpoint
from lsgm_core.atomic import DiskFullError
from lsgm_core.checkpoint import (PARTS, CheckpointError, load_model, read_checkpoint, resolve_checkpoint,
                                  save_run_checkpoint)
from lsgm_core.train import Trainer, main
from test_training import ROOT, _config, _env, _log, _without_timing

FAULTS = Path(__file__).with_name("faults.py")


# --------------------------------------------------------------------------- SIGKILL inside a save

def _variant(tensors: dict, tag: int) -> dict:
    """The checkpoint's tensors with one weight set to `tag`, so that each save has its own content."""
    out = {part: dict(state) for part, state in tensors.items()}
    key = next(iter(out["model"]))
    out["model"][key] = torch.full_like(out["model"][key], float(tag))
    return out


def _assert_whole(run: Path, contents: dict[int, dict]) -> int:
    """The checkpoint `run` resolves to is whole, its files verify, and it is one of `contents`
    (by its meta's tag) exactly; returns the tag."""
    path = resolve_checkpoint(run)
    assert ".tmp-" not in path.name, path  # never a folder still being written
    _, meta, tensors = read_checkpoint(run, parts=PARTS)  # every file checked against its SHA-256
    tag = meta["tag"]
    assert tag in contents, tag
    for part, state in contents[tag].items():
        assert set(tensors[part]) == set(state)
        assert all(torch.equal(tensors[part][k], v) for k, v in state.items()), (tag, part)
    return tag


def _killed_child(target: int, save, *args) -> None:
    """Fork; the child runs `save` with a SIGKILL planned at moment `target`; wait for it to die."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            SaveKiller(target).install(setattr).run(save, *args)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the save was not killed at moment {target} (exit status {status})"


def _train_in_process(cfg: dict, out, data_dir) -> dict:
    """Train `cfg` here, on the CPU; train.num_threads would otherwise stay set for the tests after."""
    threads = torch.get_num_threads()
    try:
        return Trainer(cfg, out, data_dir, device="cpu", show_progress=False).train()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("step", [15, 10], ids=["next-step", "same-step-again"])
def test_sigkill_at_every_moment_of_a_save_keeps_a_whole_checkpoint(tiny_checkpoints, tmp_path, monkeypatch, step):
    """A run folder holds step 5 and step 10 (`latest`); a save of `step` is killed at each of its
    moments in turn. 15 is the usual next checkpoint; 10 again is the save of a resumed run stopped
    before its next step, which swaps a folder for a new one of the same name.

    Each time, the run resolves to the old step 10 or to the new save, whole; and the next save
    works and clears what the killed one left behind.
    """
    config, meta, tensors = read_checkpoint(tiny_checkpoints["stage2"], parts=PARTS)
    assert set(tensors) == set(PARTS)
    meta = {k: v for k, v in meta.items() if k not in ("files", "format", "version", "path", "step")}
    base = tmp_path / "base"
    save_run_checkpoint(base, 5, config, _variant(tensors, 5), {**meta, "tag": 5})
    save_run_checkpoint(base, 10, config, _variant(tensors, 10), {**meta, "tag": 10})
    new = {**meta, "tag": 100 + step}
    contents = {10: _variant(tensors, 10), new["tag"]: _variant(tensors, new["tag"])}
    args = (config, contents[new["tag"]], new)

    with monkeypatch.context() as m:  # a dry run counts the moments
        counter = SaveKiller().install(m.setattr)
        counter.run(save_run_checkpoint, shutil.copytree(base, tmp_path / "dry"), step, *args)
    assert counter.moments >= 15, counter.moments  # every step of the save is hooked

    seen = set()
    for k in range(counter.moments):
        run = shutil.copytree(base, tmp_path / f"kill-{k}")
        _killed_child(k, save_run_checkpoint, run, step, *args)
        seen.add(_assert_whole(run, contents))
        # the run goes on: the next save works, and no leftover of the killed one remains
        save_run_checkpoint(run, 20, config, _variant(tensors, 20), {**meta, "tag": 20})
        assert _assert_whole(run, {20: _variant(tensors, 20)}) == 20
        assert not [p.name for p in run.rglob(".*")], k
        shutil.rmtree(run)
    assert seen == set(contents)  # kills before the switch kept the old one, after it the new one


# --------------------------------------------------------------------------- SIGKILL in training, then --resume

def _cli(run: Path, config: Path, data_dir, kill: str | None = None) -> subprocess.CompletedProcess:
    """The training CLI with --resume (which starts afresh in an empty folder), under faults.py when
    a SIGKILL is planned."""
    env = {**_env(), "LSGM_KILL": kill or ""}
    return subprocess.run([sys.executable, str(FAULTS), "--config", str(config), "--out", str(run), "--data-dir",
                           str(data_dir), "--device", "cpu", "--resume", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.slow
def test_sigkill_in_training_then_resume_ends_like_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    """Stage 2 (VAE, prior, EMA, two optimisers), 10 steps, a checkpoint every 3. One run goes
    through; the other is SIGKILLed twice by the CLI's own process: inside a checkpoint save (its 2nd
    or 3rd, at a random moment) and then, resumed, after a random step; a log line torn by the kill is
    added too. Resumed a third time, it starts at its last checkpoint's step and ends with the same
    loss log, test bound and weights, bit for bit. The draws are seeded (random.Random(6)).

    One thread throughout: other thread counts sum in other orders and part in the 5th digit.
    """
    rng = random.Random(6)
    cfg = _config(train={"stage": 2, "max_steps": 10, "ckpt_every": 3, "log_every": 1, "batch_size": 16,
                         "warmup_steps": 4, "seed": 5, "num_threads": 1})
    full = _train_in_process(cfg, tmp_path / "full", data_dir)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    run = tmp_path / "killed"

    # 1. killed inside a save: the moments of a save, counted by a dry run as in the test above
    with monkeypatch.context() as m:
        counter = SaveKiller().install(m.setattr)
        state = {part: {"w": torch.zeros(2)} for part in PARTS}  # as many files as a stage-2 save
        counter.run(save_run_checkpoint, tmp_path / "dry", 3, {}, state, {})
    save_index, moment = rng.choice([2, 3]), rng.randrange(counter.moments)
    first = _cli(run, config, data_dir, f"save:{save_index}:{moment}")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    saved = read_checkpoint(run, parts=())[1]["step"]
    assert saved in (3 * (save_index - 1), 3 * save_index)

    # 2. resumed, then killed after a random step's update
    stop = rng.randint(saved + 1, 10)
    second = _cli(run, config, data_dir, f"step:{stop}")
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert f"resumed at step {saved}" in second.stderr
    resumed_at = read_checkpoint(run, parts=())[1]["step"]
    assert resumed_at == max(saved, 3 * ((stop - 1) // 3))
    with open(run / "log.jsonl", "a") as log:
        log.write('{"step": 99, "loss": 1')  # a line cut short by a kill mid-write

    # 3. resumed again: it goes on from the last checkpoint and finishes
    third = _cli(run, config, data_dir)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"resumed at step {resumed_at}" in third.stderr
    result = json.loads(third.stdout)
    assert result["step"] == 10 and result["bad_steps"] == 0
    assert [r["step"] for r in _log(run)] == list(range(1, 11))
    assert _without_timing(_log(run)) == _without_timing(_log(tmp_path / "full"))
    assert result["test_bound_nelbo_1k"] == full["test_bound_nelbo_1k"]
    reference = read_checkpoint(tmp_path / "full", parts=("model", "ema"))[2]
    final = read_checkpoint(run, parts=("model", "ema"))[2]
    for part in ("model", "ema"):
        assert all(torch.equal(final[part][k], v) for k, v in reference[part].items()), part


# --------------------------------------------------------------------------- a full disk inside a save

def _fill_disk_at(m, target) -> None:
    """Make the write of a file whose temporary name `target(name, folder)` picks fail as on a full
    disk: half of the file written, then ENOSPC."""
    save_file, write_text = checkpoint.save_file, Path.write_text

    def enospc(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def full_save_file(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        if target(Path(filename).name, Path(filename).parent.name):
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise enospc(filename)

    def full_write_text(self, text, *args, **kwargs):
        if target(self.name, self.parent.name):
            write_text(self, text[:len(text) // 2], *args, **kwargs)
            raise enospc(self)
        return write_text(self, text, *args, **kwargs)

    m.setattr(checkpoint, "save_file", full_save_file)
    m.setattr(Path, "write_text", full_write_text)


@pytest.mark.parametrize("full_at", ["model.safetensors", "ema.safetensors", "train.safetensors", "config.json",
                                     "meta.json", "latest"])
def test_a_full_disk_in_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, full_at):
    """A run folder holds steps 5 and 10; the disk fills while the save of step 15 writes `full_at`.
    The save raises DiskFullError naming the folder it wrote in; the run still resolves to step 10,
    bit for bit as saved; nothing of the failed save is left but, when only `latest` failed, the
    whole step-15 folder; with space again, the next save works."""
    gen = torch.Generator().manual_seed(0)
    tensors = {part: {"w": torch.randn(64, 32, generator=gen), "n": torch.arange(7)} for part in PARTS}
    config = {"model": {"kind": "lsgm"}}
    run = tmp_path / "run"
    for step in (5, 10):
        save_run_checkpoint(run, step, config, _variant(tensors, step), {"tag": step})
    with monkeypatch.context() as m:
        _fill_disk_at(m, lambda name, folder: name.startswith(f".{full_at}."))
        with pytest.raises(DiskFullError) as e:
            save_run_checkpoint(run, 15, config, _variant(tensors, 15), {"tag": 15})
    folder = run if full_at == "latest" else run / "checkpoints"
    assert e.value.errno == errno.ENOSPC and f"no space left on the disk of {folder} while writing" in str(e.value)
    assert _assert_whole(run, {10: _variant(tensors, 10)}) == 10
    assert not [p.name for p in run.rglob(".*")]
    kept = ["step-00000005", "step-00000010", *(["step-00000015"] if full_at == "latest" else [])]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept
    save_run_checkpoint(run, 20, config, _variant(tensors, 20), {"tag": 20})
    assert _assert_whole(run, {20: _variant(tensors, 20)}) == 20


def test_a_full_disk_in_training_stops_the_cli_with_the_folder_named(data_dir, tmp_path, monkeypatch, capsys):
    """The training CLI's final save (step 10) meets a full disk: it exits 2 with one error line naming
    the checkpoints folder, and the run's checkpoint is still step 5, the same as a run with space."""
    cfg = _config(train={"max_steps": 10, "ckpt_every": 5, "batch_size": 16, "num_threads": 1})
    _train_in_process(cfg, tmp_path / "with-space", data_dir)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    run = tmp_path / "full"
    threads = torch.get_num_threads()
    with monkeypatch.context() as m:
        _fill_disk_at(m, lambda name, folder: folder.startswith(".step-00000010."))
        try:
            code = main(["--config", str(config), "--out", str(run), "--data-dir", str(data_dir), "--device", "cpu",
                         "--no-progress"])
        finally:
            torch.set_num_threads(threads)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"disk of {run / 'checkpoints'} " in err[0], err
    assert (run / "latest").read_text().strip() == "step-00000005"
    assert not [p.name for p in run.rglob(".*")]
    saved = read_checkpoint(run, parts=PARTS)[2]
    reference = read_checkpoint(tmp_path / "with-space" / "checkpoints" / "step-00000005", parts=PARTS)[2]
    assert set(saved) == set(reference) == {"model", "train"}
    for part, state in reference.items():
        assert set(saved[part]) == set(state) and all(torch.equal(saved[part][k], v) for k, v in state.items()), part


# --------------------------------------------------------------------------- hostile checkpoint files

@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path) -> Path:
    """A private copy of the tiny stage-2 checkpoint (model, EMA and optimiser files), to poison."""
    return Path(shutil.copytree(tiny_checkpoints["stage2"], tmp_path / "ckpt"))


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a payload creates if anything runs it."""
    return tmp_path / "code-ran"


def test_the_payloads_run_code_when_unpickled(marker):
    """The hostile files below are live: plain unpickling, or torch.load without weights_only, runs them."""
    pickle.loads(pickle_payload(marker))
    assert marker.exists()
    marker.unlink()
    (marker.parent / "payload.pt").write_bytes(torch_payload(marker))
    torch.load(marker.parent / "payload.pt", weights_only=False)
    assert marker.exists()


PAYLOADS = {"pickle": pickle_payload, "pickle-protocol-2": lambda m: pickle_payload(m, 2), "torch-save": torch_payload}


@pytest.mark.parametrize("name, payload, expected", [
    ("model.safetensors", "torch-save", "not a readable safetensors file"),
    ("model.safetensors", "pickle", "not a readable safetensors file"),
    ("ema.safetensors", "pickle-protocol-2", "not a readable safetensors file"),
    ("config.json", "pickle", "not valid JSON"),
    ("meta.json", "pickle", "not valid JSON"),
    ("meta.json", "torch-save", "not valid JSON"),
])
def test_a_hostile_file_is_refused_and_runs_nothing(ckpt, marker, name, payload, expected):
    """A payload under a name the loader reads, with meta.json forged to carry its SHA-256 (so that
    the loader does parse it): refused with an error naming the file; the payload never runs."""
    (ckpt / name).write_bytes(PAYLOADS[payload](marker))
    if name != "meta.json":
        rehash(ckpt, name)
    with pytest.raises(CheckpointError) as error:
        load_model(ckpt)
    assert str(ckpt / name) in str(error.value) and expected in str(error.value)
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt, parts=PARTS)  # the optimiser state of --resume too
    assert not marker.exists()


def test_loading_never_unpickles(ckpt, monkeypatch):
    """Whole checkpoints load with every unpickler in reach disabled: nothing is unpickled, ever."""
    def refuse(*args, **kwargs):
        raise AssertionError("the loader unpickled something")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    model = load_model(ckpt)
    assert model.meta["step"] == 40
    assert set(read_checkpoint(ckpt, parts=PARTS)[2]) == set(PARTS)


@pytest.mark.parametrize("forge, expected", [
    (lambda meta: meta["files"].update({"../../outside.safetensors": "0" * 64}), "not a checkpoint file"),
    (lambda meta: meta["files"].update({"/etc/passwd": "0" * 64}), "not a checkpoint file"),
    (lambda meta: meta.update(files=["model.safetensors"]), "malformed"),
    (lambda meta: meta.update(version="1"), "malformed"),
    (lambda meta: meta.update(version=99), "newer than this lsgm_core"),
])
def test_a_forged_meta_json_cannot_point_elsewhere(ckpt, forge, expected):
    meta = json.loads((ckpt / "meta.json").read_text())
    forge(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=expected):
        load_model(ckpt)


@pytest.mark.parametrize("latest", ["../../elsewhere", "/etc", ".step-00000040.tmp-1234", "", "\udcff\x00"])
def test_a_forged_latest_cannot_point_outside_the_run(tiny_checkpoints, tmp_path, latest):
    run = Path(shutil.copytree(tiny_checkpoints["stage2"].parents[1], tmp_path / "run"))
    (run / "latest").write_bytes(latest.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="latest"):
        resolve_checkpoint(run)


def test_a_config_of_a_giant_model_allocates_nothing(ckpt):
    """config.json forged to describe a model of ~40 trillion weights (160 TB): refused as a
    mismatch with the weights file before any of it is allocated."""
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["vae_channels"] = [16, 2 ** 20]
    (ckpt / "config.json").write_text(json.dumps(config))
    rehash(ckpt, "config.json")
    with pytest.raises(CheckpointError, match="do not fit this model architecture"):
        load_model(ckpt)
