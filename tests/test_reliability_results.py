"""Results are never lost or half-written: a sweep killed mid-run (SIGKILL to its worker and to itself) leaves
every completed row readable, and ``--resume`` appends the rest cleanly; a worker never outlives its sweep."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.results import KEY, load_results

ROOT = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"
VARIANTS = ["bf16", "fp32"]
NEW_TOKENS = [2, 3]
pytestmark = pytest.mark.slow


def start_sweep(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks", "run", "--model", SMOL, "--variants", ",".join(VARIANTS),
           "--prompt-tokens", "16", "--new-tokens", ",".join(map(str, NEW_TOKENS)), "--repeats", "1",
           "--warmup", "0", "--device", "cpu", "--no-overhead-check", "--out", str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows_on_disk(out: Path) -> list[dict]:
    try:
        return load_results(out)["rows"]
    except Exception:  # noqa: BLE001 - not there yet
        return []


def wait_for_rows(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = rows_on_disk(out)
        if len(rows) >= at_least:
            return rows
        assert proc.poll() is None, f"the sweep ended early:\n{proc.stdout.read()}"
        time.sleep(0.1)
    raise AssertionError(f"no {at_least} row(s) in {out} after {timeout:.0f} s")


def _cmdline(p: psutil.Process) -> str:
    """A child's command line; "" for one that ended meanwhile (a short-lived helper the runner started and has
    not reaped yet is a zombie, whose command line cannot be read)."""
    try:
        return " ".join(p.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


def worker_of(proc: subprocess.Popen, timeout: float = 180) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended early:\n{proc.stdout.read()}"
        kids = [p for p in psutil.Process(proc.pid).children() if "benchmarks.worker" in _cmdline(p)]
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise AssertionError("no worker process found")


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def check_files(out: Path) -> list[dict]:
    """results.json and results.csv both parse completely and agree on the rows they hold."""
    data = load_results(out)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    keys_json = [tuple(str(r[k]) for k in KEY) for r in data["rows"]]
    keys_csv = [tuple(r[k] for k in KEY) for r in table]
    # the two files are each replaced atomically, one after the other: the CSV is never ahead of the JSON and at
    # most the row being written when the process died is missing from it
    assert keys_csv == keys_json[:len(keys_csv)] and len(keys_json) - len(keys_csv) <= 1, (keys_json, keys_csv)
    return data["rows"]


def test_killed_sweep_keeps_its_rows_and_resume_appends_the_rest(tmp_path, capsys):
    out = tmp_path / "killed"
    # 1. SIGKILL the worker and, right after, the sweep itself, once a row has landed
    proc = start_sweep(out)
    try:
        worker = worker_of(proc)
        wait_for_rows(proc, out, 1)
        worker.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone(worker.pid)
    first = check_files(out)
    ok_first = [r for r in first if r["status"] == "ok"]
    assert ok_first and ok_first[0]["variant"] == "bf16" and ok_first[0]["decode_tok_s"] > 0
    assert load_results(out)["finished"] is None                      # it never got to say it had finished

    # 2. without --resume the folder is protected; --resume with other settings is refused with the reason
    from benchmarks.__main__ import main
    args = ["run", "--model", SMOL, "--variants", ",".join(VARIANTS), "--prompt-tokens", "16", "--new-tokens",
            ",".join(map(str, NEW_TOKENS)), "--warmup", "0", "--device", "cpu", "--no-overhead-check", "--out",
            str(out)]
    assert main(args + ["--repeats", "1"]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(args + ["--repeats", "2", "--resume"]) == 2
    assert "repeats (was 1, now 2)" in capsys.readouterr().err
    assert main(args + ["--resume", "--overwrite"]) == 2

    # 3. resume, then SIGKILL only the sweep: its worker must not run on alone (PR_SET_PDEATHSIG)
    proc = start_sweep(out, "--resume")
    try:
        worker = worker_of(proc)
        wait_for_rows(proc, out, len(ok_first) + 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone(worker.pid), "the worker outlived its killed sweep"
    second = check_files(out)
    assert second[:len(ok_first)] == ok_first                         # kept rows are untouched, in order

    # 4. resume to the end: every combo exactly once, all ok, the first run's rows still there unchanged
    proc = start_sweep(out, "--resume")
    text, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, text
    assert "resuming" in text
    final = check_files(out)
    combos = {(v, n) for v in VARIANTS for n in NEW_TOKENS}
    assert sorted((r["variant"], r["new_tokens"]) for r in final) == sorted(combos), final
    assert all(r["status"] == "ok" for r in final), [(r["variant"], r["error"]) for r in final]
    assert final[:len(ok_first)] == ok_first
    data = load_results(out)
    assert data["finished"] and len(data["resumed"]) == 2
    assert data["resumed"][0]["kept_rows"] == len(ok_first)
    assert json.loads((out / "results.json").read_text())["summary"]["rows"] == len(combos)
    assert (out / "report.html").exists()


def test_time_budget_ends_the_run_with_every_row_written(tmp_path):
    """``--time-budget-s``: the worker that the budget cuts and the one it leaves no time for are error rows
    saying so (not gaps), and the run ends within the budget plus the worker's stop, its files complete."""
    out = tmp_path / "budget"
    budget = 20
    # 400 new tokens x (warm-up + 2 repeats) on SmolLM2 takes far longer than 20 s on a CPU
    proc = start_sweep(out, "--time-budget-s", str(budget), "--new-tokens", "400", "--repeats", "2", "--warmup", "1")
    t0 = time.monotonic()
    text, _ = proc.communicate(timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 0, text
    assert took < budget + 40, f"the run took {took:.0f} s against a budget of {budget} s:\n{text}"
    rows = check_files(out)
    assert load_results(out)["finished"]
    by_variant = {r["variant"]: r for r in rows}
    assert sorted(by_variant) == sorted(VARIANTS) and len(rows) == len(VARIANTS), rows
    cut, never = by_variant[VARIANTS[0]], by_variant[VARIANTS[1]]
    assert cut["status"] == "error" and f"time budget ({budget:g} s) ran out" in cut["error"], cut
    assert never["status"] == "error" and "not started" in never["error"], never
    assert "--resume measures it" in cut["error"] and "--resume measures it" in never["error"]
