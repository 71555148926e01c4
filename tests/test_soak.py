"""The soak (python -m app.soak) and the judging of answers it shares with the property test
(app.answers): a short soak of the real app, and the judges on known texts."""
import json
import subprocess
import sys

import pytest

from app.answers import BadAnswer, final_exceptions, has_non_finite, internal_errors, judge_refusal
from app.paths import ROOT

# A server log as Gradio writes it: a deliberate refusal, a component's refusal chained to its
# cause, and a bug.
LOG = """\
Traceback (most recent call last):
  File "gradio/queueing.py", line 870, in process_events
gradio.exceptions.Error: 'no run is going'
Traceback (most recent call last):
  File "gradio/components/number.py", line 132, in raise_if_out_of_bounds
TypeError: '<' not supported between instances of 'dict' and 'int'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "gradio/blocks.py", line 2187, in preprocess_data
gradio.exceptions.ComponentProcessingError: Could not preprocess input component at index 1
Original error: TypeError: '<' not supported
Traceback (most recent call last):
  File "gradio/blocks.py", line 2167, in preprocess_data
pydantic_core._pydantic_core.ValidationError: 1 validation error for ImageData
2026-12-01 16:30:00,000 app ERROR unexpected error in run
Traceback (most recent call last):
  File "app/tabs/sample.py", line 40, in run
ZeroDivisionError: division by zero
Traceback (most recent call last):
  File "app/tabs/train.py", line 9, in upload
pydantic_core._pydantic_core.ValidationError: 1 validation error for Report
"""


def test_final_exceptions_skip_the_causes_and_internal_errors_keep_only_bugs():
    assert [name for name, _ in final_exceptions(LOG)] == [
        "gradio.exceptions.Error", "gradio.exceptions.ComponentProcessingError",
        "pydantic_core._pydantic_core.ValidationError", "ZeroDivisionError",
        "pydantic_core._pydantic_core.ValidationError"]
    # Gradio's check of a payload's shape is a refusal; the same error raised by app code is a bug
    assert internal_errors(LOG) == ["ZeroDivisionError", "pydantic_core._pydantic_core.ValidationError",
                                    "unexpected error in run"]
    assert internal_errors(LOG.split("2026-12-01")[0]) == []


@pytest.mark.parametrize("message", ["", "  ", "Error", "Error raised.", None,
                                     "internal error (KeyError: 'x'); details are in the app's log",
                                     "Traceback (most recent call last):\n  File ..."])
def test_unclear_refusals_are_bad_answers(message):
    with pytest.raises(BadAnswer):
        judge_refusal("/sample", message)


def test_clear_refusals_pass_and_non_finite_numbers_are_found_anywhere():
    assert judge_refusal("/sample", " seed must be a whole number, got None ") == "seed must be a whole number, got None"
    assert has_non_finite([1, "x", {"a": [2.0, float("nan")]}]) and has_non_finite((float("-inf"),))
    assert not has_non_finite([1, 2.5, "nan", None, {"a": 1e308}])


def test_bad_arguments_are_refused():
    out = subprocess.run([sys.executable, "-m", "app.soak", "--clients", "0"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "--clients must be at least 1" in out.stderr


@pytest.mark.slow
def test_a_short_soak_loses_nothing_and_reports_memory_queue_and_latency(compare_server):
    """4 clients for 20 s against the real app (the tiny model and a pixel baseline, so that Compare
    is in the mix): every request answered, each as expected (good ones served, bad ones refused with
    a message), no internal error in the log."""
    server = compare_server
    out = subprocess.run([sys.executable, "-m", "app.soak", "--url", server.url, "--pid", str(server.proc.pid),
                          "--server-log", str(server.stderr), "--clients", "4", "--minutes", str(20 / 60)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and report["ok"], (report, out.stderr[-3000:])
    assert report["lost"] == 0 and report["problems"] == [] and report["server_internal_errors"] == []
    answers = report["answers"]
    assert answers["results"] > 0 and sum(answers.values()) == report["requests"] >= 8
    assert "/compare" in report["endpoints"]  # the server lists a pixel baseline, so Compare is soaked too
    served = sum(p["n"] for p in report["latency_s"].values())
    assert served == report["requests"]  # every answer timed under its endpoint
    rss = report["rss_mib"]
    assert 0 < rss["start"] <= rss["peak"] and rss["end"] <= rss["peak"] and len(rss["series"]) >= 5
    assert report["queue"]["max"] >= 0 and len(report["queue"]["series"]) >= 5
    assert all(0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"] for p in report["latency_s"].values())
