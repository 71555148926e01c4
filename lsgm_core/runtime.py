"""Runtimes for the distilled student's networks: PyTorch (the default), or ONNX Runtime on the CPU.

A 1-step sample is two small networks, the student's U-Net and its decoder, on a batch of 16 or so;
PyTorch's eager kernels spend much of that time on per-call overhead and layout changes. ONNX
Runtime runs the U-Net with fused convolutions in under half PyTorch's time on a CPU, the decoder
(whose transposed convolutions it runs on one thread) in about the same: a 1-step sample about 1.5
times faster (README, "Runtimes"). `student_on(model, "onnxruntime")` exports the student's U-Net and decoder to
ONNX (in memory, nothing written), opens an ONNX Runtime session for each, and returns a copy of
the student that runs them; its preconditioning, moves and the likelihood's mean stay in PyTorch.
Every conversion is checked on a seeded probe against PyTorch, and refused beyond TOLERANCE.
The result is cached per student and rebuilt when its weights change.
"""
from __future__ import annotations

import copy
import io
import threading
import warnings
import weakref

import torch
from torch import nn

from .student import STEPS, Student

RUNTIMES = ("torch", "onnxruntime")
# largest |difference| allowed between a converted network's outputs and PyTorch's on the probe
# (float32 kernels that sum in another order differ by about 1e-6 here)
TOLERANCE = 1e-4
_CACHE: "weakref.WeakKeyDictionary[Student, tuple[tuple, Student]]" = weakref.WeakKeyDictionary()
_CONVERTING = threading.Lock()  # torch.onnx.export keeps global state: one export at a time (the app's threads)


class OnnxNetwork(nn.Module):
    """`module` exported to ONNX and run by an ONNX Runtime session on the CPU (batch size free)."""

    def __init__(self, module: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], threads: int):
        super().__init__()
        import onnxruntime

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # the U-Net's check of the latent's size is a constant of the traced graph, as it should be;
            # the TorchScript exporter is deprecated, but needs no onnxscript and exports in a second
            # (torch is pinned in requirements.txt)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, example, buffer, dynamo=False, input_names=list(names), output_names=["out"],
                              dynamic_axes={n: {0: "batch"} for n in (*names, "out")})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
        # no spin-waiting between runs: its threads would take the cores from PyTorch's between the two
        # networks (16 samples, 1 step, 2 threads: 47 ms median with spinning, 23 ms without)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.names = names
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        # CPU inputs only: student_on refuses a student off the CPU before any conversion or run
        feeds = {n: x.detach().float().contiguous().numpy() for n, x in zip(self.names, inputs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError("the onnxruntime runtime needs the onnx and onnxruntime packages: "
                             "pip install -r requirements.txt (or use runtime torch)") from None


def available(runtime: str) -> bool:
    """Whether `runtime` can run here (its packages are installed)."""
    try:
        check_runtime(runtime)
    except ValueError:
        return False
    return True


def _converted(student: Student, threads: int) -> Student:
    # the probe: seeded z_t over the range of times the student's grids use, at two batch sizes
    t = torch.linspace(0.05, 1.0, 2 * max(STEPS))
    z = torch.randn((len(t), *student.shape), generator=torch.Generator().manual_seed(0))
    # copies, so that converting leaves the model's own student (perhaps in training, perhaps float16) as it was
    net = copy.deepcopy(student.net).float().eval()
    # a student with segments also takes the time its step goes to: here a tenth of t
    inputs, names = ((z, t, t / 10), ("z", "t", "s")) if student.segments else ((z, t), ("z", "t"))
    fast_net = OnnxNetwork(net, inputs, names, threads)
    pairs = [(fast_net, net, inputs), (fast_net, net, tuple(x[:3] for x in inputs))]
    fast_decoder = None
    if student.decoder is not None:
        decoder = copy.deepcopy(student.decoder).float().eval()
        fast_decoder = OnnxNetwork(decoder, (z,), ("z",), threads)
        pairs += [(fast_decoder, decoder, (z,)), (fast_decoder, decoder, (z[:3],))]
    with torch.no_grad():
        worst = max((fast(*args) - slow(*args)).abs().max().item() for fast, slow, args in pairs)
    if not worst <= TOLERANCE:
        raise RuntimeError(f"ONNX Runtime's student differs from PyTorch's by {worst:.2e} (more than {TOLERANCE:g}); "
                           "use runtime torch")
    return student.with_networks(fast_net, fast_decoder, max_abs_diff=worst)


def student_on(model, runtime: str) -> Student | None:
    """The model's student as `runtime` runs it (None: the model has none). "torch": the student itself."""
    check_runtime(runtime)
    student = getattr(model, "student", None)
    if student is None or runtime == "torch":
        return student
    params = list(student.parameters())  # one walk of its modules: a tenth of a 1-step sample's time
    if any(p.device.type != "cpu" for p in params):
        raise ValueError("the onnxruntime runtime runs on the CPU; for a model on another device use runtime torch")
    # in-place updates (an optimiser's step, load_state_dict) bump a tensor's version: convert again
    threads = torch.get_num_threads()
    key = (threads, *((p.data_ptr(), p._version) for p in params))
    with _CONVERTING:
        cached = _CACHE.get(student)
        if cached is None or cached[0] != key:
            cached = _CACHE[student] = (key, _converted(student, threads))
    return cached[1]
