"""The typed result row (benchmarks/rows.py) and the one writer of a run's folder (results.save_run)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.results import COLUMNS, QUALITY_COLUMNS, RAW, SERVING_COLUMNS, new_row, rows_to_csv, save_run
from benchmarks.rows import SECTION_OF, Load, ResultRow, RowError, Serving

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _current_files():
    """Committed results written with today's columns (older runs lack some: those are read, not compared)."""
    out = []
    for f in sorted(RESULTS.glob("*/results.json")):
        rows = json.loads(f.read_text(encoding="utf-8"))["rows"]
        if rows and all(list(r) == [*COLUMNS, RAW] for r in rows):
            out.append(f)
    return out


def test_every_column_lives_in_exactly_one_place():
    identity = [f for f in ResultRow.__dataclass_fields__ if f not in ("load", "latency", "memory", "roofline",
                                                                      "quality", "serving", "raw")]
    assert sorted(identity + list(SECTION_OF)) == sorted(COLUMNS)
    assert {c for c, s in SECTION_OF.items() if s == "quality"} == set(QUALITY_COLUMNS)
    assert {c for c, s in SECTION_OF.items() if s == "serving"} == set(SERVING_COLUMNS)


def test_committed_results_round_trip_exactly_through_the_typed_row():
    """to_dict() of every row of every committed results file with today's columns gives that row back (same keys,
    same order, same values), and the CSV written from them is byte for byte the committed results.csv."""
    files = _current_files()
    names = {f.parent.name for f in files}
    assert len(files) >= 5 and "cpu-serve-transformers-smollm2" in names and "cpu-kv-cache-smollm2" in names, names
    for f in files:
        rows = json.loads(f.read_text(encoding="utf-8"))["rows"]
        back = [ResultRow.from_dict(r).to_dict() for r in rows]
        for r, b in zip(rows, back):
            assert b == r and list(b) == list(r), f
        assert rows_to_csv(back) == (f.parent / "results.csv").read_text(encoding="utf-8"), f


def test_older_results_files_still_read():
    """Rows of runs from before the serving/quality/KV columns: read, the missing columns empty."""
    for f in sorted(RESULTS.glob("*/results.json")):
        for r in json.loads(f.read_text(encoding="utf-8"))["rows"]:
            d = ResultRow.from_dict(r).to_dict()
            assert list(d) == [*COLUMNS, RAW] and all(d[k] == v for k, v in r.items()), f


def test_new_row_is_the_flat_row_it_always_was():
    r = new_row("random:tiny-llama", "nf4", "cpu", 2, 32, 8, decode_tok_s=5.0, perplexity=12.5, concurrency=None)
    expected = {c: None for c in COLUMNS}
    expected.update(model="random:tiny-llama", variant="nf4", device="cpu", batch_size=2, prompt_tokens=32,
                    new_tokens=8, random_weights=True, status="ok", error="", decode_tok_s=5.0, perplexity=12.5)
    expected[RAW] = {}
    assert r == expected and list(r) == [*COLUMNS, RAW]


@pytest.mark.parametrize("build, words", [
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, status="crashed"), "status must be one of ok, oom"),
    (lambda: new_row("m", "bf16", "cpu", 0, 8, 4), "batch_size must be an integer of at least 1"),
    (lambda: new_row("m", "bf16", "cpu", True, 8, 4), "batch_size must be an integer"),
    (lambda: new_row("", "bf16", "cpu", 1, 8, 4), "model must be a non-empty text"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, load_s=-1.0), "load_s must be at least 0"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, decode_tok_s="fast"), "decode_tok_s must be a number or None"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, peak_rss_gb=True), "peak_rss_gb must be a number"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, accuracy=25.0), "accuracy is a fraction"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, repeats=-1), "repeats must be an integer of at least 0"),
    (lambda: new_row("m", "bf16", "cpu", 1, 8, 4, decode_tok_per_s=3.0), "unknown result column"),
    (lambda: Serving(requests=4, errors=5), "errors (5) cannot exceed requests (4)"),
    (lambda: Serving(request_rate=0.0), "request_rate must be positive"),
    (lambda: Load(kernel=3), "kernel must be text"),
    (lambda: ResultRow.from_dict({"model": "m", "variant": "bf16", "device": "cpu"}), "missing: batch_size"),
])
def test_bad_values_are_refused_with_a_clear_message(build, words):
    with pytest.raises(RowError) as caught:
        build()
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_signed_and_non_finite_values_pass():
    """A harness faster than its yardstick has a negative overhead; NaN/inf become empty cells when written."""
    row = ResultRow.new("m", "bf16", "cpu", 1, 8, 4, harness_overhead=-0.02, decode_tok_s=math.inf)
    assert row.latency.harness_overhead == -0.02
    assert rows_to_csv([row.to_dict()]).splitlines()[1].split(",")[COLUMNS.index("decode_tok_s")] == ""


def test_set_routes_flat_columns_to_sections_and_changes_nothing_on_a_bad_value():
    row = ResultRow.new("m", "bf16", "cpu", 1, 8, 4, kv_cache="int4", load=Load(load_s=1.5, kernel="tinygemm"))
    row.set(ttft_ms=20.0, peak_rss_gb=1.0, roofline_tok_s=90.0, quality_error="x", requests=3, warmup_s=2.0)
    assert (row.latency.ttft_ms, row.memory.peak_rss_gb, row.roofline.roofline_tok_s, row.quality.quality_error,
            row.serving.requests, row.load.warmup_s, row.load.load_s) == (20.0, 1.0, 90.0, "x", 3, 2.0, 1.5)
    before = row.to_dict()
    with pytest.raises(RowError):
        row.set(ttft_ms=30.0, status="nope")
    with pytest.raises(RowError):
        row.set(status="oom", ttft_ms="slow")
    assert row.to_dict() == before
    row.fail("oom", "MemoryError: x")
    assert (row.status, row.error, row.get("ttft_ms")) == ("oom", "MemoryError: x", 20.0)


def test_a_serving_level_is_a_typed_row_with_the_serving_columns():
    from benchmarks.serving import level_row
    cfg = SimpleNamespace(prompt_tokens=128, new_tokens=16)
    ep = SimpleNamespace(device="endpoint:http://127.0.0.1:1/v1")
    ok = dict(ok=True, ttft_ms=50.0, e2e_s=1.0, output_tokens=16, prompt_tokens=130, token_count="usage",
              decode_tok_s=20.0, itl_s=[0.05] * 15)
    records = [dict(ok, i=0), dict(ok, i=1, ttft_ms=70.0), {"i": 2, "ok": False, "error": "HTTP 500"}]
    row = level_row(cfg, ep, "smol", 2, math.inf, records, 2.0)
    assert list(row) == [*COLUMNS, RAW]
    assert (row["variant"], row["batch_size"], row["concurrency"], row["request_rate"], row["requests"],
            row["errors"], row["ttft_ms"], row["tok_s"], row["status"]) == \
        ("served", 2, 2, None, 3, 1, 60.0, 16.0, "ok")
    assert row["error"].startswith("1 of 3 requests failed: HTTP 500") and len(row["raw"]["requests"]) == 3
    assert ResultRow.from_dict(row).to_dict() == row


def test_quality_values_the_row_cannot_hold_become_a_quality_error(monkeypatch):
    from benchmarks import quality, worker
    from benchmarks.config import RunConfig
    bad = {"perplexity": 12.0, "perplexity_zh": 30.0, "accuracy": 0.5, "accuracy_raw": 0.5, "quality_tokens": "many",
           "quality_items": 10, "accuracy_nonfinite": 0, "quality_s": 1.0}
    monkeypatch.setattr(quality, "evaluate_quality", lambda lm, **kw: dict(bad))
    ev = SimpleNamespace(progress=lambda f, m: None)
    values, _ = worker.quality_columns(object(), RunConfig(models=["m"], quality=True), "m [bf16]", ev)
    assert set(values) == set(QUALITY_COLUMNS) and "quality_tokens must be a number or None" in values["quality_error"]


def test_the_one_writer_writes_atomically_and_records_a_broken_report(tmp_path, monkeypatch):
    import benchmarks.report as report
    rows = [new_row("m", "bf16", "cpu", 1, 8, 4, decode_tok_s=10.0, ttft_ms=5.0)]
    data = {"config": {"models": ["m"]}, "environment": {"device": "cpu"}, "rows": rows}
    save_run(None, data, report=True)                # no folder: nothing to do
    out = tmp_path / "run"
    save_run(out, data)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json"]
    assert json.loads((out / "results.json").read_text())["rows"] == rows

    def broken(path):
        raise ValueError("a plot that cannot be drawn")
    monkeypatch.setattr(report, "write_report", broken)
    save_run(out, data, report=True)
    assert "a plot that cannot be drawn" in data["report_error"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_the_runner_and_the_serving_scenario_share_the_writer():
    import inspect

    from benchmarks import runner, serving
    for mod in (runner, serving):
        src = inspect.getsource(mod)
        assert mod.save_run is save_run and "write_results(" not in src and "write_report(" not in src, mod


FAKE_WORKER = r"""
import json, sys
from benchmarks.results import new_row
good = new_row("smollm2-135m-instruct", "bf16", "cpu", 1, 16, 4, decode_tok_s=12.5, repeats=1)
bad_value = dict(new_row("smollm2-135m-instruct", "bf16", "cpu", 2, 16, 4, repeats=1), decode_tok_s="fast")
no_combo = {k: v for k, v in new_row("smollm2-135m-instruct", "bf16", "cpu", 4, 16, 4).items() if k != "batch_size"}
with open(sys.argv[1], "a", encoding="utf-8") as ev:
    for row in (good, bad_value, no_combo):
        ev.write(json.dumps({"event": "row", "row": row}) + "\n")
    ev.write(json.dumps({"event": "done"}) + "\n")
"""


def test_the_runner_reads_every_worker_row_as_a_typed_row(tmp_path, monkeypatch):
    """Was: a worker's row went into the files as it came (a text in a number column, a row without its batch
    size ended the sweep with a KeyError). Now each is read with ResultRow.from_dict: a good row passes as it was,
    a bad one becomes an error row of its combination saying why, a row without its combination makes the
    combination left unreported an error row with that reason."""
    import sys

    from benchmarks import runner
    from benchmarks.config import RunConfig
    monkeypatch.setattr(runner, "worker_command", lambda spec, events: [sys.executable, "-c", FAKE_WORKER,
                                                                        str(events)])
    cfg = RunConfig(models=["smollm2-135m-instruct"], variants=["bf16"], batch_sizes=[1, 2, 4], prompt_tokens=[16],
                    new_tokens=[4], repeats=1, warmup=0, device="cpu", out=str(tmp_path))
    events = []
    outcome = runner.run_worker(cfg, "smollm2-135m-instruct", "bf16", "cpu", tmp_path / "w.log", events.append)
    rows = {r["batch_size"]: r for r in (e["row"] for e in events if e.get("event") == "row")}
    assert outcome == "died" and sorted(rows) == [1, 2, 4]
    assert rows[1] == new_row("smollm2-135m-instruct", "bf16", "cpu", 1, 16, 4, decode_tok_s=12.5, repeats=1)
    assert rows[2]["status"] == "error" and rows[2]["decode_tok_s"] is None
    assert rows[2]["error"] == ("the worker sent a row the runner cannot read: decode_tok_s must be a number or "
                                "None, got 'fast' (str)"), rows[2]["error"]
    assert rows[2]["raw"]["worker_row"]["decode_tok_s"] == "fast"
    assert rows[4]["status"] == "error" and rows[4]["error"].startswith(
        "the worker sent a row the runner cannot read: a result row needs model, variant, device, batch_size"), rows[4]
    assert all(list(r) == [*COLUMNS, RAW] for r in rows.values())
