"""Helpers for the UI tests: start the real app on a free local port, and a headless Chromium for Playwright.

Browser: Debian's chromium (apt-get install -y chromium) driven by the Playwright pip package (its own driver;
no `playwright install` needed). Override the binary with PLAYGROUND_CHROMIUM.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.experiments.common import free_port, stop_process  # noqa: F401 - free_port is the tests' too
from playground.catalog import DEFAULT_MODEL  # noqa: F401 - imported by the UI tests from here

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def ui_handler(app, module: str, name: str):
    """The event handler ``name`` of ``playground.ui.<module>`` (or of the dotted module ``module``, e.g.
    ``benchmarks.ui_tab``) in a built app (to call it in-process), called as the page calls it: the event's input
    values in their order on the wire (its ``inputs``, then its ``inputs_kwargs``), then what Gradio injects
    (request, progress)."""
    module = module if "." in module else f"playground.ui.{module}"
    for block_fn in app.fns.values():
        if getattr(block_fn.fn, "__module__", "") == module and block_fn.fn.__name__ == name:
            return page_call(block_fn)
    raise AssertionError(f"no {module}.{name} event handler")


def page_call(block_fn):
    """``block_fn.fn`` itself, or, for an event with keyword inputs, a function that takes every value in wire
    order and passes the keyword ones by name (as Gradio does)."""
    names = list(block_fn.input_keyword_names)
    if not names:
        return block_fn.fn
    fn, n_positional = block_fn.fn, len(block_fn.inputs) - len(names)

    def call(*values):
        positional, keyword = values[:n_positional], values[n_positional:n_positional + len(names)]
        injected = values[n_positional + len(names):]
        return fn(*positional, *injected, **dict(zip(names, keyword)))
    call.__name__ = fn.__name__
    return call


def by_elem_id(blocks, elem_id: str):
    """The one component of a built ``gr.Blocks`` with this ``elem_id`` (fails on none or several)."""
    found = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert len(found) == 1, f"{len(found)} components with elem_id {elem_id!r}"
    return found[0]


def ui_event(blocks, elem_id: str, event: str = "click"):
    """The event listener (a gradio BlockFunction: ``.fn``, ``.inputs``, ``.outputs``) that the ``event`` of the
    component ``elem_id`` triggers, as the page would call it (fails on none or several)."""
    target = by_elem_id(blocks, elem_id)._id
    found = [f for f in blocks.fns.values() if any(t[0] == target and t[1] == event for t in f.targets or [])]
    assert len(found) == 1, f"{len(found)} {event} listeners on {elem_id!r}"
    return found[0]


@contextmanager
def running_app(preload=((DEFAULT_MODEL, "bf16"),), **build_kwargs):
    """build_app + launch on 127.0.0.1:<free port> in this process; yields (url, app, manager)."""
    from playground.manager import ModelManager
    from playground.ui import build_app, launch_app

    manager = ModelManager(device="cpu")
    for name, variant in preload:
        manager.get(name, variant)
    app = build_app(manager, **build_kwargs)
    launch_app(app, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True,
               concurrency_limit=2)
    try:
        yield app.local_url, app, manager
    finally:
        app.close()
        manager.unload_all()


def chromium_path() -> str | None:
    path = os.environ.get("PLAYGROUND_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


@contextmanager
def browser():
    """A headless Chromium. A missing browser fails the tests (run `bash setup.sh --dev`): never skipped green."""
    from playwright import sync_api
    exe = chromium_path()
    if exe is None:
        pytest.fail("no chromium binary: `bash setup.sh --dev` installs it (or set PLAYGROUND_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class CliProcess:
    """``python launch.py ARGS`` as a subprocess; a thread collects its merged stdout/stderr."""

    def __init__(self, *args: str, env: dict | None = None):
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._chunks.append(line)

    @property
    def output(self) -> str:
        return "".join(self._chunks)

    def wait_for(self, needles: list[str], timeout: float) -> str:
        """Wait until every needle is in the output; fail with the output when it exits or times out."""
        deadline = time.monotonic() + timeout
        while not all(n in self.output for n in needles):
            if self.proc.poll() is not None:
                self._reader.join(5)
                if all(n in self.output for n in needles):
                    break
                raise AssertionError(f"launch.py exited with {self.proc.returncode} before {needles}:\n"
                                     f"{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {needles}:\n{self.output}")
            time.sleep(0.2)
        return self.output

    def stop(self) -> int:
        code = stop_process(self.proc)
        self._reader.join(5)
        return code


@contextmanager
def launched_app(*args: str, timeout: float = 600):
    """The real CLI, ``python launch.py --host 127.0.0.1 --port <free> ARGS``, in its own process; yields
    (url, CliProcess) once it serves, and stops it afterwards (its output is in the CliProcess, for messages)."""
    port = free_port()
    proc = CliProcess("--host", "127.0.0.1", "--port", str(port), *args)
    try:
        proc.wait_for(["* Running on local URL"], timeout)
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.stop()
