"""What the experiments share: a ``launch.py`` server on a free loopback port, and the machine a number came from.

The library (``benchmarks/``: config, runner, worker, trackers, results, report) measures variants; the modules in
``benchmarks/experiments/`` are one-off studies built on it and on the app (reliability, UI streaming cost, KV-cache
quality, the GPU machine's session script).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from playground.catalog import DEFAULT_MODEL  # noqa: F401 - the experiments' default model

from ..environment import ROOT, cpu_model, git_info, package_version

__all__ = ["DEFAULT_MODEL", "ROOT", "LaunchedApp", "free_port", "git_commit_label", "machine_facts",
           "stop_process"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, wait_s: float = 20) -> int:
    """terminate, then kill if it has not exited after ``wait_s``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class LaunchedApp:
    """``python launch.py ARGS --port P`` as a subprocess on loopback, started and ready (its "Running on local
    URL" line) when constructed; its merged output is kept (and written to ``log_path`` if given). Use as a
    context manager, or call ``stop()``."""

    def __init__(self, *args: str, env: dict | None = None, log_path: Path | None = None,
                 timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full_env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONUNBUFFERED="1",
                        GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
        self._log = open(log_path, "w", encoding="utf-8") if log_path else None
        self._lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--port", str(self.port), *args],
                                     cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while "Running on local URL" not in self.output:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"launch.py exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"launch.py did not start in {timeout:.0f} s:\n{self.output[-4000:]}")
            time.sleep(0.2)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.append(line)
            if self._log is not None:
                self._log.write(line)
                self._log.flush()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        import psutil
        return psutil.Process(self.pid).memory_info().rss

    def stop(self) -> int:
        code = stop_process(self.proc)
        self._reader.join(5)
        if self._log is not None and not self._log.closed:
            self._log.close()
        return code

    def __enter__(self) -> "LaunchedApp":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def git_commit_label() -> str:
    """The commit, with ``-dirty`` when tracked files differ from it (``PLAYGROUND_GIT_COMMIT`` on a tree copy)."""
    git = git_info()
    return str(git["commit"]) + ("-dirty" if git.get("dirty") else "")


def machine_facts() -> dict:
    """Platform, CPU, Python, torch and the app's libraries, for an experiment's summary."""
    import platform

    import torch
    return {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            **{pkg: package_version(pkg) for pkg in ("gradio", "gradio_client", "transformers")}}
