"""Runs a sweep: one worker process per (model, variant); whatever a worker does, the sweep goes on.

``run_sweep(config, on_row=..., progress=...)`` runs in the caller's thread (the UI puts it in a background
thread), calls ``on_row(row)`` as each row arrives and ``progress(fraction, message)`` as work advances, and
rewrites results.json/results.csv after every row and report.html after every worker, so a run that is stopped
half-way still leaves usable files. Each file is replaced atomically (written aside, then renamed): a run killed at
any moment (even SIGKILL) leaves the previous complete version, never a half-written file. ``previous=`` (the
data of an earlier run in the same folder, ``python -m benchmarks run --resume``) keeps its ``ok`` rows and
measures only what is missing or failed, appending the new rows.

A worker dies with its parent (Linux ``PR_SET_PDEATHSIG``): killing the sweep never leaves a worker running
alone, still holding the memory and the GPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

from playground.device_use import device_sharers, sharing_device

from .config import RunConfig
from .environment import ROOT, collect_environment
from .generation import load_prompt_text
from .results import failed_rows, new_row, save_run
from .rows import ResultRow

DEVICE_SHARER = "benchmark"    # the Chat and Compare tabs say "A benchmark is running" (``playground.device_use``)
POLL_S = 0.2
OOM_SIGNALS = {signal.SIGKILL}


def is_running() -> bool:
    """True while a sweep runs in this process (the chat tab says the device is busy: ``playground.device_use``)."""
    return DEVICE_SHARER in device_sharers()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _precheck(variant: str, device: str) -> str | None:
    from playground.errors import VariantUnsupportedError
    from playground.variants import get_variant
    try:
        get_variant(variant).check_supported(device)
    except VariantUnsupportedError as exc:
        return str(exc)
    return None


def _worker_env(config: RunConfig) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if config.memory_cap_gb:
        env["MALLOC_ARENA_MAX"] = "2"   # glibc arenas reserve 64 MB of address space per thread otherwise
    return env


# Run the worker module after asking the kernel to SIGKILL this process when its parent dies (prctl
# PR_SET_PDEATHSIG = 1; Linux only, skipped elsewhere). A parent that died before the prctl is caught by the ppid
# check. Done in the child (not a preexec_fn, which is unsafe in the threaded UI process).
WORKER_PRELUDE = """import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("benchmarks.worker: the sweep that started this worker is gone")
sys.argv = ["benchmarks.worker"] + sys.argv[2:]
runpy.run_module("benchmarks.worker", run_name="__main__", alter_sys=True)
"""


def worker_command(spec: Path, events: Path) -> list[str]:
    return [sys.executable, "-c", WORKER_PRELUDE, str(os.getpid()), "--spec", str(spec), "--events", str(events)]


def _log_tail(path: Path, chars: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _death_row_status(rc: int, tail: str, timed_out: bool, timeout_s, limit: str = "") -> tuple[str, str]:
    from playground.errors import mentions_out_of_memory
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no output"
    if timed_out:
        return "error", f"worker timed out after {timeout_s:g} s{limit} (last output: {last})"
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if -rc in OOM_SIGNALS:
            return "oom", (f"worker killed by {name} (most likely the kernel's out-of-memory killer); "
                           f"last output: {last}")
        status = "oom" if mentions_out_of_memory(tail) else "error"
        return status, f"worker died from {name}: {last}"
    status = "oom" if mentions_out_of_memory(tail) else "error"
    return status, f"worker exited with code {rc}: {last}"


def _kill(proc: subprocess.Popen) -> None:
    """End the worker we started, and its children (it runs in its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def _combo_of(row) -> tuple[int, int, int] | None:
    """(batch_size, prompt_tokens, new_tokens) of a row, when they are there and are whole numbers of at least 1."""
    if not isinstance(row, dict):
        return None
    combo = tuple(row.get(c) for c in ("batch_size", "prompt_tokens", "new_tokens"))
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in combo)
    return combo if ok else None


class WorkerRows:
    """Checks each row a worker sends by reading it as a ``ResultRow`` (``rows.py``): a row that reads back is
    passed on as the typed row writes it; one that does not becomes an error row of its combination saying why
    (the worker's row kept in ``raw``), so a worker bug never leaves a silently wrong results file. A row too broken
    to name its combination is dropped and its reason becomes the error of the combinations left unreported."""

    def __init__(self, model: str, variant: str, device: str):
        self.model, self.variant, self.device = model, variant, device
        self.unreadable: list[str] = []

    def check(self, row) -> dict | None:
        try:
            return ResultRow.from_dict(row).to_dict()
        except (ValueError, TypeError) as exc:         # RowError is a ValueError
            why = f"the worker sent a row the runner cannot read: {exc}"
        combo = _combo_of(row)
        if combo is None:
            self.unreadable.append(why)
            return None
        return new_row(self.model, self.variant, self.device, *combo, status="error", error=why, repeats=0,
                       raw={"worker_row": row})


def _follow(proc, ev, config: RunConfig, cancel, on_event, check_row=lambda row: row) -> tuple[set, bool, bool, bool]:
    """Forward the worker's events until it exits (or is cancelled / times out); each row goes through
    ``check_row`` first (None: dropped). Returns (combos reported, saw "done", timed out, cancelled)."""
    done: set[tuple] = set()
    finished = timed_out = False
    t0, buf = time.monotonic(), ""
    while True:
        exited = proc.poll() is not None
        if cancel is not None and cancel.is_set() and not exited:
            _kill(proc)
            return done, finished, timed_out, True
        buf += ev.read()
        *lines, buf = buf.split("\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if msg.get("event") == "row":
                r = msg["row"] = check_row(msg.get("row"))
                if r is None:
                    continue
                done.add((r["batch_size"], r["prompt_tokens"], r["new_tokens"]))
            finished = finished or msg.get("event") == "done"
            on_event(msg)
        if exited:
            return done, finished, timed_out, False
        if config.timeout_s and time.monotonic() - t0 > config.timeout_s:
            timed_out = True
            _kill(proc)
            continue
        time.sleep(POLL_S)


def run_worker(config: RunConfig, model: str, variant: str, device: str, log_path: Path,
               on_event: Callable[[dict], None], cancel: threading.Event | None = None, limit: str = "") -> str:
    """Run one worker, forwarding its events; adds failure rows for combos it did not report (``limit``: what
    set its ``timeout_s``, said in a timed-out row). Returns "done", "cancelled" or "died"."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        spec, events = Path(tmp) / "spec.json", Path(tmp) / "events.jsonl"
        spec.write_text(json.dumps({"config": config.to_dict(), "model": model, "variant": variant,
                                    "device": device}))
        events.touch()
        rows = WorkerRows(model, variant, device)
        with open(log_path, "wb") as log, open(events, encoding="utf-8") as ev:
            proc = subprocess.Popen(worker_command(spec, events), cwd=ROOT, env=_worker_env(config),
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                done, finished, timed_out, cancelled = _follow(proc, ev, config, cancel, on_event, rows.check)
            except BaseException:  # Ctrl+C or a callback error: never leave the worker running alone
                _kill(proc)
                raise
        if cancelled:
            return "cancelled"
        rc = proc.returncode
        if finished and rc == 0 and len(done) == len(config.combos()):
            return "done"
        status, error = _death_row_status(rc, _log_tail(log_path), timed_out, config.timeout_s, limit)
        if rows.unreadable and not timed_out and rc == 0:    # the worker ran to its end: its rows were the problem
            status, error = "error", "; ".join(rows.unreadable[:3])
        for row in failed_rows(config, model, variant, device, status, error, done=done):
            row["raw"]["log"] = str(log_path)
            on_event({"event": "row", "row": row})
        return "died"


# Settings that change what a row means: a resumed run must use the same ones as the rows it keeps.
RESUME_MAY_DIFFER = {"models", "variants", "batch_sizes", "prompt_tokens", "new_tokens", "timeout_s", "time_budget_s",
                     "out", "name"}
MIN_WORKER_S = 15.0     # a worker is not started with less of the run's time budget left than this


class ResumeError(ValueError):
    """The results already in the folder cannot be continued with this configuration."""


def _row_key(r: dict) -> tuple:
    return (r["model"], r["variant"], r["device"], int(r["batch_size"]), int(r["prompt_tokens"]),
            int(r["new_tokens"]))


def resume_plan(previous: dict, config: RunConfig, device: str) -> tuple[list[dict], set[tuple]]:
    """Rows of ``previous`` to keep, and the keys of those already measured ``ok`` (not measured again).

    Kept: every ``ok`` row, and failed rows this configuration does not cover. Failed rows it covers (an oom, an
    error, a worker killed mid-run) are dropped and measured again."""
    old_cfg = previous.get("config") or {}
    new_cfg = config.to_dict()
    differ = sorted(k for k in set(old_cfg) | set(new_cfg) if k not in RESUME_MAY_DIFFER
                    and old_cfg.get(k) != new_cfg.get(k))
    if differ:
        raise ResumeError("cannot resume: these settings differ from the run already in the folder: " +
                          ", ".join(f"{k} (was {old_cfg.get(k)!r}, now {new_cfg.get(k)!r})" for k in differ) +
                          "; use the same settings, another --out, or --overwrite")
    covered = {(m, v, device, *c) for m in config.models for v in config.variants for c in config.combos()}
    per_combo = len(config.decode_modes) * len(config.kv_cache)      # the worker writes a row for each
    ok: dict[tuple, list[dict]] = {}
    keep, seen = [], set()
    for r in previous.get("rows", []):
        key = _row_key(r)
        if r.get("status") == "ok":
            # one measurement = the combo plus its decode mode and KV cache setting (a row each)
            full = key + (decode_kind(r.get("decode_mode"), (r.get("raw") or {}).get("decode_requested")),
                          r.get("kv_cache") or "default")
            if full in seen:
                continue                         # never two rows for one measurement
            seen.add(full)
            ok.setdefault(key, []).append(r)
            keep.append(r)
        elif key not in covered:
            keep.append(r)
    # a combo the run was stopped in the middle of (its eager row written, its fast row not) is measured again,
    # all of its rows, so that none is missing and none is there twice
    partial = {k for k, rs in ok.items() if k in covered and len(rs) < per_combo}
    keep = [r for r in keep if not (r.get("status") == "ok" and _row_key(r) in partial)]
    return keep, set(ok) - partial


def decode_kind(mode: str | None, requested: str | None = None) -> str:
    """A row's decode mode as the measurement it is: "eager", the peer's own mode ("transformers-static"),
    "fast-unfused" / "fast-tinygemm" (``requested``: the mode the row asked for, in its raw), or "fast" (whatever
    the fast decoder's mode text says: compiled, CUDA graphs, fused projections)."""
    from .config import AB_MODES, PEER_MODES
    if mode in (None, "", "eager"):
        return "eager"
    if requested in AB_MODES:
        return requested
    return mode if mode in PEER_MODES else "fast"


def run_sweep(config: RunConfig, on_row: Callable[[dict], None] | None = None,
              progress: Callable[[float, str], None] | None = None, cancel: threading.Event | None = None,
              argv: list[str] | None = None, previous: dict | None = None) -> list[dict]:
    """Run every (model, variant) of ``config``; returns the rows (also written to ``config.out``).

    ``previous``: results of an earlier run into the same folder (``load_results``); its ok rows are kept and
    not measured again, the new rows are appended after them (``resume_plan``)."""
    device = resolve_device(config.device)
    out = Path(config.out) if config.out else None
    text_info = load_prompt_text()
    kept, measured = resume_plan(previous, config, device) if previous else ([], set())
    rows: list[dict] = list(kept)
    data = {"config": config.to_dict(), "environment": collect_environment(device, argv), "rows": rows,
            "prompt_source": {"path": text_info[1], "sha256": text_info[2]}, "finished": None, "cancelled": False}
    if previous:
        data["resumed"] = list(previous.get("resumed", [])) + [{
            "previous_started": previous.get("environment", {}).get("date"),
            "previous_finished": previous.get("finished"), "previous_rows": len(previous.get("rows", [])),
            "kept_rows": len(kept), "environment": previous.get("environment")}]
    total, done_units = config.units(), 0
    budget_end = time.monotonic() + config.time_budget_s if config.time_budget_s else None
    per_mv = config.units_per_variant()
    say = progress or (lambda f, m: None)

    def add(row: dict) -> None:
        nonlocal done_units
        rows.append(row)
        done_units += 1
        save_run(out, data)
        if on_row is not None:
            try:
                on_row(row)
            except Exception:  # noqa: BLE001 - a UI callback error must not end the run
                traceback.print_exc()
        say(done_units / total, f"{row['model']} [{row['variant']}] bs={row['batch_size']} "
                                f"p={row['prompt_tokens']} n={row['new_tokens']}: {row['status']}")

    try:
        with sharing_device(DEVICE_SHARER):
            for model in config.models:
                for variant in config.variants:
                    if cancel is not None and cancel.is_set():
                        data["cancelled"] = True
                        break
                    base = done_units
                    missing = [c for c in config.combos() if (model, variant, device, *c) not in measured]
                    if not missing:                  # resumed: everything of this (model, variant) is there
                        done_units = base + per_mv
                        continue
                    status, reason = "unsupported", _precheck(variant, device)
                    left = None if budget_end is None else budget_end - time.monotonic()
                    if not reason and left is not None and left < MIN_WORKER_S:
                        status, reason = "error", (f"not started: {left:.0f} s of the run's time budget "
                                                   f"({config.time_budget_s:g} s) was left; --resume measures it")
                    if reason:
                        done_units += 1
                        for row in failed_rows(config, model, variant, device, status, reason, done=[
                                c for c in config.combos() if c not in missing]):
                            add(row)
                        done_units = base + per_mv
                        continue
                    # resumed with some combos already measured: the worker does the smallest grid that covers
                    # the missing ones; rows it makes for combos already kept are dropped
                    sub = config if len(missing) == len(config.combos()) else replace(
                        config, batch_sizes=_ordered(config.batch_sizes, {c[0] for c in missing}),
                        prompt_tokens=_ordered(config.prompt_tokens, {c[1] for c in missing}),
                        new_tokens=_ordered(config.new_tokens, {c[2] for c in missing}))
                    limit = ""
                    if left is not None and (sub.timeout_s is None or left < sub.timeout_s):
                        sub = replace(sub, timeout_s=left)
                        limit = f": the run's time budget ({config.time_budget_s:g} s) ran out; --resume measures it"
                    say(base / total, f"starting {model} [{variant}] on {device}")

                    def on_event(msg, loaded=[False]):
                        nonlocal done_units
                        kind = msg.get("event")
                        if not loaded[0] and (kind == "row" or (kind == "progress" and msg["fraction"] >= 1.0)):
                            loaded[0] = True       # the load step of this (model, variant) is over
                            done_units += 1
                        if kind == "row" and _row_key(msg["row"]) not in measured:
                            add(msg["row"])
                        elif kind == "progress":
                            frac = 0.0 if loaded[0] else max(0.0, msg["fraction"])
                            say((done_units + frac) / total, msg["message"])

                    log = (out or Path(tempfile.gettempdir()) / "bench-logs") / "logs" / \
                        f"{Path(model).name.replace(':', '_')}__{variant}.log"
                    outcome = run_worker(sub, model, variant, device, log, on_event, cancel, limit)
                    done_units = base + per_mv
                    if outcome == "cancelled":
                        data["cancelled"] = True
                        break
                    save_run(out, data, report=True)
                if data["cancelled"]:
                    break
    finally:
        data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if hasattr(os, "getloadavg"):
            data["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        save_run(out, data, report=True)
    say(1.0, "cancelled" if data["cancelled"] else "done")
    return rows


def _ordered(values: list, wanted: set) -> list:
    return [v for v in values if v in wanted]
