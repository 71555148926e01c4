"""Property-based calls of every API endpoint of a real `python -m app` server (hypothesis).

The endpoints and their parameters come from the server's own API description at run time
(Client.view_api), so an endpoint added to the app is covered with no change here. Each
parameter's strategy follows its schema: the default (a valid value) or, at generated positions,
hostile values for its type: numbers out of range, huge, negative, fractional where whole, NaN
and infinities (sent over the raw queue protocol, which gradio_client cannot carry); strings
empty, unicode, path-like; None; wrong types; and where a file is expected, small valid images,
garbage bytes, empty files and references to server files that were never uploaded.

Every call must be answered within CALL_TIMEOUT_S with a result or a refusal that says what was
wrong (app.answers.judge_refusal), and the server's log must show no traceback but deliberate
refusals (app.answers.internal_errors).

Long work: the generated calls of endpoints in LONG (training runs, latent maps) always carry at
least one hostile value in a parameter with a closed set of valid values (a number's range, a
choice; never free text, where a random string may well be a valid run name), so no generated
call can start a training run or a map; a long endpoint that accepts one anyway fails the test
(after stopping the run). Their valid paths are the subject of tests/test_app_api.py. The other
endpoints get default-valued calls too, on the tiny model, where each costs well under a second.
"""
import concurrent.futures
import io
import itertools
import json
import re
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from app.answers import BadAnswer, has_non_finite, internal_errors, judge_refusal, raw_call  # noqa: E402

CALLS = 300  # generated calls per endpoint
CALL_TIMEOUT_S = 300  # a bound for a busy shared machine, not a timing assertion
LONG = {"/train_start", "/latent_map"}
WORKERS = 4  # endpoints explored at once: the server answers refusals in parallel
ARTIFACT = Path(__file__).parents[1] / "test-artifacts" / "api_properties.json"

TEXT = st.one_of(st.sampled_from(["", " ", "../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini",
                                  "checkpoints/../checkpoints/tiny-lsgm", "runs/../../x", "\x00", "ünïcødé ☃",
                                  "a" * 5000, "checkpoints/broken", "None", "nan"]),
                 st.text(max_size=40))
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])


def bounds(param) -> tuple[float, float] | None:
    m = re.search(r"between (\S+) and (\S+)", param["type"].get("description", ""))
    return (float(m.group(1)), float(m.group(2))) if m else None


def hostile_number(param) -> st.SearchStrategy:
    """Values a number parameter must refuse: outside its range (whole numbers below 0 or not whole
    where it has no range), non-finite, or of the wrong type."""
    span = bounds(param)
    if span:
        lo, hi = span
        out = st.one_of(st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False),
                        st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False),
                        st.sampled_from([lo - 1, hi + 1, -1e308, 1e308, 2 ** 70, -(2 ** 70)]))
    else:
        out = st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 31),
                        st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not float(x).is_integer()))
    return st.one_of(out, NON_FINITE, TEXT.filter(lambda s: not _is_number(s)), st.lists(st.floats(), max_size=2))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class Files:
    """Files written for the calls: uploaded by gradio_client with handle_file."""

    def __init__(self, folder: Path):
        self.folder, self.ids = folder, itertools.count()  # next() on a count is atomic across threads

    def write(self, data: bytes, suffix: str):
        path = self.folder / f"f{next(self.ids)}{suffix}"
        path.write_bytes(data)
        return handle_file(str(path))

    def strategy(self) -> st.SearchStrategy:
        image = st.builds(_png, st.integers(1, 48), st.integers(1, 48), st.sampled_from(["L", "RGB", "RGBA", "P"]),
                          st.integers(0, 255))
        good = st.builds(self.write, image, st.just(".png"))
        bad = st.builds(self.write, st.one_of(st.binary(max_size=2000), st.just(b""), image.map(lambda b: b[:len(b) // 2])),
                        st.sampled_from([".png", ".jpg", ".zip", ".txt", ""]))
        unsent = st.sampled_from([{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                                  {"path": "../../../etc/passwd", "meta": {"_type": "gradio.FileData"}},
                                  {"url": "http://127.0.0.1:1/x.png", "meta": {"_type": "gradio.FileData"}}])
        return st.one_of(good, bad, unsent, st.none(), TEXT)


def _png(w: int, h: int, mode: str, fill: int) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), fill if mode in ("L", "P") else (fill,) * len(mode)).save(buf, "PNG")
    return buf.getvalue()


def param_strategies(param, files: Files) -> tuple[st.SearchStrategy, st.SearchStrategy, bool]:
    """(valid, hostile, closed): strategies for one parameter from its schema; `closed` where every
    hostile value is certainly refused (a range or a set of choices, not free text)."""
    kind, py = param["type"].get("type"), param["python_type"]["type"]
    default = st.just(param.get("parameter_default"))
    if "filepath" in py:
        one = files.strategy()
        if py.startswith("list"):
            return default, st.one_of(st.lists(one, max_size=4), one), False
        return default, one, False
    choices = param["type"].get("enum")
    if choices:
        names = {str(c) for c in choices}
        hostile = st.one_of(TEXT.filter(lambda s: s not in names), WRONG_TYPES.filter(lambda v: v is not None),
                            hostile_number(param))
        return st.one_of(default, st.sampled_from(choices)), hostile, True
    if kind in ("number", "integer"):
        # closed only with a range: a whole-number box without one rounds a fraction (gradio's precision=0)
        return default, hostile_number(param), bounds(param) is not None
    if kind == "boolean":
        return st.one_of(default, st.booleans()), st.one_of(TEXT, st.integers(), st.lists(st.booleans(), max_size=2)), True
    return default, st.one_of(TEXT, WRONG_TYPES), False


def call_strategy(name: str, params: list, files: Files) -> st.SearchStrategy:
    """Argument lists: each position valid, or hostile at a drawn set of positions; for a LONG
    endpoint that set holds at least one closed position. An endpoint without parameters gets
    extra junk arguments, which must be ignored or refused."""
    if not params:
        return st.lists(st.one_of(TEXT, WRONG_TYPES), max_size=3)
    parts = [param_strategies(p, files) for p in params]
    closed = [i for i, (_, _, c) in enumerate(parts) if c]

    @st.composite
    def args(draw):
        hostile = draw(st.sets(st.sampled_from(range(len(parts)))))
        if name in LONG:
            hostile.add(draw(st.sampled_from(closed)))
        return [draw(parts[i][1] if i in hostile else parts[i][0]) for i in range(len(parts))]

    return args()


class Caller:
    """One call of one endpoint, judged; counts per endpoint. Each thread has its own client (a
    session of its own): gradio_client's event stream is not safe to share between threads."""

    def __init__(self, url: str, folder: Path):
        self.url, self.folder, self.local = url, folder, threading.local()
        self.fn_index = {e.api_name: e.fn_index for e in self.client.endpoints.values()}
        self.counts: dict[str, dict[str, int]] = {}

    @property
    def client(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = Client(self.url, verbose=False, analytics_enabled=False,
                                       download_files=str(self.folder / "downloads"),
                                       httpx_kwargs={"timeout": CALL_TIMEOUT_S})
        return self.local.client

    def call(self, name: str, args: list) -> bool:
        """True for a result, False for a clear refusal; BadAnswer otherwise."""
        if has_non_finite(args):
            ok, out = raw_call(self.url, self.fn_index[name], args, CALL_TIMEOUT_S)
        else:
            try:
                self.client.submit(*args, api_name=name).result(timeout=CALL_TIMEOUT_S)
                ok, out = True, None
            except AppError as e:
                ok, out = False, str(e)
            except concurrent.futures.TimeoutError:
                raise BadAnswer(f"{name}{tuple(args)!r:.300}: no answer in {CALL_TIMEOUT_S} s") from None
        tally = self.counts.setdefault(name, {"calls": 0, "results": 0, "refusals": 0})
        tally["calls"] += 1
        tally["results" if ok else "refusals"] += 1
        if not ok:
            judge_refusal(name, out)
        return ok


def explore(caller: Caller, name: str, params: list, files: Files) -> None:
    @settings(max_examples=CALLS, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(call_strategy(name, params, files))
    def prop(args):
        if caller.call(name, args) and name in LONG:
            if name == "/train_start":
                caller.client.predict(api_name="/train_stop")
            raise BadAnswer(f"{name} accepted {args!r:.300}, which has a value outside its schema")

    start = time.perf_counter()
    prop()
    print(f"{name}: {caller.counts.get(name)} in {time.perf_counter() - start:.0f} s", flush=True)


@pytest.mark.slow
def test_every_endpoint_answers_generated_calls_with_a_result_or_a_clear_refusal(app_server, tmp_path):
    log_start = app_server.stderr.stat().st_size
    caller = Caller(app_server.url, tmp_path)
    endpoints = caller.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    files = Files(tmp_path)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        runs = {name: pool.submit(explore, caller, name, spec["parameters"], files) for name, spec in endpoints.items()}
        for run in runs.values():
            run.result()
    elapsed = time.perf_counter() - start
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps({"seconds": round(elapsed, 1), "endpoints": caller.counts}, indent=1))
    print(f"\n{sum(c['calls'] for c in caller.counts.values())} calls in {elapsed:.0f} s: {caller.counts}")
    with open(app_server.stderr, encoding="utf-8", errors="replace") as log:
        log.seek(log_start)
        assert not internal_errors(log.read())
    assert set(caller.counts) == set(endpoints)
    assert all(c["calls"] >= CALLS for c in caller.counts.values()), caller.counts
    assert app_server.proc.poll() is None  # still serving
    assert caller.call("/models", [])
