"""Helpers of the reliability tests: a ``launch.py`` server on loopback, and the Gradio queue protocol spoken
directly (what the browser sends), so that hostile values can reach the UI's own event handlers."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import httpx

from benchmarks.experiments.reliability import Server, server  # noqa: F401  (re-exported for the tests)

from playground.catalog import DEFAULT_MODEL  # noqa: F401 - imported by the reliability tests from here


def event_ids(url: str, auth_cookies=None) -> dict[str, int]:
    """api_name → fn_index of every event of the app (UI events are private but callable, like the page does)."""
    cfg = httpx.get(url.rstrip("/") + "/config", timeout=30, cookies=auth_cookies).json()
    return {d["api_name"]: d["id"] for d in cfg["dependencies"] if d.get("api_name")}


@dataclass
class QueueResult:
    http_status: int                 # of the join request (200 unless refused before queueing)
    success: bool | None = None      # process_completed's success flag
    output: dict = field(default_factory=dict)
    detail: str = ""                 # the refusal's detail (join refused) or the error message (handler failed)
    messages: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.detail or json.dumps(self.output)[:2000]


def queue_call(url: str, fn_index: int | None, data=None, *, session: str | None = None, raw_body: bytes | None = None,
               timeout: float = 300) -> QueueResult:
    """POST /gradio_api/queue/join then read the session's event stream until the event completes."""
    base = url.rstrip("/") + "/gradio_api"
    session = session or uuid.uuid4().hex[:12]
    body = raw_body if raw_body is not None else json.dumps(
        {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
         "trigger_id": None}).encode()
    with httpx.Client(timeout=timeout) as http:
        r = http.post(base + "/queue/join", content=body, headers={"content-type": "application/json"})
        if r.status_code != 200:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            return QueueResult(r.status_code, detail=str(detail))
        res = QueueResult(200)
        with http.stream("GET", base + "/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                res.messages.append(msg.get("msg"))
                if msg.get("msg") == "process_completed":
                    res.success = msg.get("success")
                    res.output = msg.get("output") or {}
                    res.detail = "" if res.success else str(res.output.get("error") or "")
                    return res
        raise AssertionError(f"the event stream ended without process_completed: {res.messages}")
