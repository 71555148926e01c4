"""Judging the app's answers to API calls, as a client sees them: shared by the soak (app.soak)
and the property test of every endpoint (tests/test_api_properties.py).

An answer is good when it is a result, or a refusal whose message says what was wrong: never a
traceback, an empty or generic "Error", or the app's "internal error" (a bug caught by
app.common.user_errors). Non-finite numbers cannot go through gradio_client (its JSON encoder
refuses NaN), yet Python's json on the server reads them, so calls carrying one go over the
queue's own HTTP protocol (`raw_call`), as any other client could send them.
"""
from __future__ import annotations

import json
import math
import re
import uuid

import httpx

# Messages that say nothing about what was wrong.
GENERIC = {"", "error", "error raised.", "none"}
UNHELPFUL = ("Traceback (most recent call last)", "internal error (", "has not enabled verbose error reporting")
# Refusals Gradio or the app raise on purpose; any other exception ending a logged traceback is a
# bug, but for Gradio's check of a payload's shape (pydantic's, in Blocks.preprocess_data), which
# refuses a value of the wrong structure, a file reference that is not one, with its message.
DELIBERATE = {"gradio.exceptions.Error", "gradio.exceptions.ComponentProcessingError",
              "gradio.exceptions.InvalidPathError"}
SHAPE_CHECK = ("pydantic_core._pydantic_core.ValidationError", "in preprocess_data")


class BadAnswer(AssertionError):
    """The app answered with an internal error, an unclear message, or not at all."""


def judge_refusal(endpoint: str, message: str) -> str:
    """The refusal's message, or BadAnswer where it does not say what was wrong."""
    text = (message or "").strip()
    if text.lower() in GENERIC or any(u in text for u in UNHELPFUL):
        raise BadAnswer(f"{endpoint}: unclear refusal {text[:500]!r}")
    return text


def has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(has_non_finite, value))
    if isinstance(value, dict):
        return any(map(has_non_finite, value.values()))
    return False


def raw_call(url: str, fn_index: int, data: list, timeout_s: float) -> tuple[bool, object]:
    """(True, output data) or (False, error message) for one event sent as Gradio's browser page
    sends it: POST /gradio_api/queue/join, then the answer from the server-sent events of
    /gradio_api/queue/data. json.dumps writes NaN and Infinity, which the server's parser reads."""
    base = url.rstrip("/") + "/gradio_api"
    session = uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session,
                       "event_data": None, "trigger_id": None})
    with httpx.Client(timeout=timeout_s) as http:
        joined = http.post(f"{base}/queue/join", content=body, headers={"Content-Type": "application/json"})
        if joined.status_code != 200:
            detail = joined.json().get("detail") if "json" in joined.headers.get("content-type", "") else joined.text
            return False, f"HTTP {joined.status_code}: {detail}"
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    output = msg.get("output") or {}
                    if msg.get("success"):
                        return True, output.get("data")
                    return False, output.get("error")
                if msg.get("msg") == "unexpected_error":
                    return False, msg.get("message")
    raise BadAnswer(f"event {fn_index}: the stream ended without an answer")


def final_exceptions(log_text: str) -> list[tuple[str, str]]:
    """(exception, traceback) for each traceback in a server log that ends in its own exception,
    not in one it caused."""
    finals = []
    for block in log_text.split("Traceback (most recent call last):")[1:]:
        if re.search(r"(The above exception was the direct cause|During handling of the above exception)"
                     r"[^\n]*\n\s*$", block):
            continue  # a cause; the exception it led to ends the next block
        summary = re.search(r"^([A-Za-z_][\w.]*)(?::|$)", block, re.MULTILINE)
        finals.append((summary.group(1) if summary else "?", block))
    return finals


def internal_errors(log_text: str) -> list[str]:
    """Tracebacks in a server log that end in anything but a deliberate refusal, and the app's
    own reports of an unexpected error."""
    bad = [name for name, block in final_exceptions(log_text)
           if name not in DELIBERATE and not (name == SHAPE_CHECK[0] and SHAPE_CHECK[1] in block)]
    bad += re.findall(r"unexpected error in \w+", log_text)
    return bad
