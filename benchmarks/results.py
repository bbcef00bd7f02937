"""Rows, their columns, and reading/writing results folders (atomic writes, clear errors on corrupt files)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

SCHEMA = 1
KEY = ("model", "variant", "device", "batch_size", "prompt_tokens", "new_tokens")
# one value per (model, variant), repeated in each of its rows; empty for random weights (see RANDOM_QUALITY_NOTE)
QUALITY_COLUMNS = ("perplexity", "perplexity_zh", "accuracy", "quality_tokens", "quality_items", "quality_s",
                   "quality_error")
RANDOM_QUALITY_NOTE = "random weights: quality is not measured (the answers are noise)"
COLUMNS = [
    *KEY, "status", "error", "random_weights", "kernel", "decode_mode", "kv_cache", "repeats", "timed_with",
    "load_s", "load_read_s", "load_quantize_s", "convert_s", "load_peak_mem_gb",
    "ttft_ms", "ttft_ms_p90", "decode_tok_s", "decode_tok_s_p90", "itl_p50_ms", "itl_p90_ms",
    "e2e_s", "e2e_short_s", "e2e_long_s",
    "peak_gpu_mem_gb", "peak_gpu_reserved_gb", "peak_gpu_nvml_gb", "nvml_scope", "peak_rss_gb", "weights_gb",
    "generate_e2e_s", "harness_overhead",
    "read_bandwidth_gb_s", "decode_bytes_gb", "roofline_tok_s", "roofline_fraction", "x_transformers", "warmup_s",
    "kv_cache_gb",
    *QUALITY_COLUMNS,
]
# serving benchmark against an endpoint (benchmarks/serving.py, `python -m benchmarks serve`); empty elsewhere
SERVING_COLUMNS = ("concurrency", "request_rate", "requests", "errors", "duration_s", "req_s", "tok_s",
                   "ttft_ms_p99", "itl_p99_ms", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "prompt_tokens_measured",
                   "output_tokens_mean", "token_count")
COLUMNS += SERVING_COLUMNS
RAW = "raw"            # per-repeat lists live under row["raw"] (JSON only)
STATUSES = ("ok", "oom", "error", "unsupported")
SHORT_TOKENS, LONG_TOKENS = 32, 256   # answer lengths behind e2e_short_s / e2e_long_s


class ResultsError(Exception):
    """A results folder or file cannot be read; the message says why and what to do."""


def new_row(model: str, variant: str, device: str, batch_size: int, prompt_tokens: int, new_tokens: int,
            **values) -> dict:
    """A flat row (``COLUMNS`` then ``raw``) built and checked by the typed row (``rows.ResultRow``)."""
    from .rows import ResultRow
    return ResultRow.new(model, variant, device, batch_size, prompt_tokens, new_tokens, **values).to_dict()


def failed_rows(config, model: str, variant: str, device: str, status: str, error: str, done=()) -> list[dict]:
    """One row per combo of (model, variant) not already in ``done`` (a set of (bs, prompt, new))."""
    return [new_row(model, variant, device, bs, p, n, status=status, error=error, repeats=0)
            for bs, p, n in config.combos() if (bs, p, n) not in set(done)]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for an empty list."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    pos = (len(vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def median(values: list[float]) -> float | None:
    return percentile(values, 50)


def e2e_for(ttft_s: float, itl_s: list[float], tokens: int) -> tuple[float, bool]:
    """Seconds until a ``tokens``-long answer is complete: measured when the run made that many tokens, else
    extrapolated at the run's own per-step decode pace. Returns (seconds, extrapolated)."""
    if len(itl_s) >= tokens - 1:
        return ttft_s + sum(itl_s[: tokens - 1]), False
    step = (sum(itl_s) / len(itl_s)) if itl_s else ttft_s
    return ttft_s + sum(itl_s) + (tokens - 1 - len(itl_s)) * step, True


def model_label(row: dict) -> str:
    return f"{row['model']} [random weights]" if row.get("random_weights") else str(row["model"])


# ---- writing -------------------------------------------------------------------------------------------------
def atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else _clean(r.get(c))) for c in COLUMNS})
    return buf.getvalue()


def summarize(rows: list[dict]) -> dict:
    overheads = [r["harness_overhead"] for r in rows
                 if r.get("status") == "ok" and r.get("harness_overhead") is not None]
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in STATUSES}
    return {"rows": len(rows), "status_counts": counts,
            "harness_overhead_median": median(overheads), "harness_overhead_max": max(overheads, default=None),
            "harness_overhead_target": 0.03}


def add_peer_ratios(rows: list[dict]) -> list[dict]:
    """Set each row's ``x_transformers``: its decode tok/s over that of the peer row (``--peer
    transformers-static``: transformers' own static-cache generate) of the same model, variant, device, batch size,
    prompt and new tokens in the same run (the peer row itself: 1.0); None where that peer has no ok row. The
    variant is matched too: a GPTQ row is compared with transformers running the same GPTQ model. Rows are
    changed in place (recomputed from scratch at every write) and returned."""
    from .config import PEER_MODES
    peers = {tuple(r.get(c) for c in KEY): r["decode_tok_s"] for r in rows
             if r.get("decode_mode") in PEER_MODES and r.get("status") == "ok"
             and (r.get("kv_cache") or "default") == "default" and r.get("decode_tok_s")}
    for r in rows:
        peer, tok = peers.get(tuple(r.get(c) for c in KEY)), r.get("decode_tok_s")
        ok = peer and r.get("status") == "ok" and isinstance(tok, (int, float)) and not isinstance(tok, bool)
        r["x_transformers"] = tok / peer if ok else None
    return rows


def write_results(out_dir: str | Path, data: dict) -> None:
    """Write results.json and results.csv (atomically). ``data`` has config, environment, rows."""
    out = Path(out_dir)
    add_peer_ratios(data["rows"])
    data = dict(data, schema=SCHEMA, summary=summarize(data["rows"]))
    atomic_write(out / "results.json", json.dumps(_deep_clean(data), indent=1, default=str, allow_nan=False))
    atomic_write(out / "results.csv", rows_to_csv(data["rows"]))


def save_run(out_dir: str | Path | None, data: dict, report: bool = False) -> None:
    """The one writer of a run's folder, for every scenario (speed and quality sweeps, serving): results.json and
    results.csv (each replaced atomically), then report.html when ``report``. Nothing happens without a folder.
    A report that fails is recorded in ``data["report_error"]`` (written with the next save), never raised: a
    broken plot must not end the run."""
    if out_dir is None:
        return
    write_results(out_dir, data)
    if report:
        try:
            from .report import write_report
            write_report(out_dir)
        except Exception:  # noqa: BLE001 - a broken plot must not end the run
            import traceback
            data["report_error"] = traceback.format_exc(limit=3)


def _deep_clean(obj):
    if isinstance(obj, dict):
        return {k: _deep_clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_clean(v) for v in obj]
    return _clean(obj)


# ---- reading -------------------------------------------------------------------------------------------------
def results_path(path: str | Path) -> Path:
    p = Path(path)
    return p / "results.json" if p.is_dir() or not p.suffix else p


def load_results(path: str | Path) -> dict:
    p = results_path(path)
    if not p.exists():
        raise ResultsError(f"{p} does not exist: run `python -m benchmarks run ... --out {p.parent}` first")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{p} is not text: the file is corrupt; re-run the benchmark") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{p} is corrupt (invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                           f"re-run the benchmark to regenerate it") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "config" not in data:
        raise ResultsError(f"{p} is not a benchmark results file (it needs \"config\" and \"rows\"); "
                           f"re-run the benchmark to regenerate it")
    for i, r in enumerate(data["rows"]):
        if not isinstance(r, dict) or any(k not in r for k in KEY + ("status",)):
            raise ResultsError(f"{p}: row {i} is incomplete (needs {', '.join(KEY)}, status); "
                               f"the file is corrupt; re-run the benchmark")
    return data


# ---- comparing -----------------------------------------------------------------------------------------------
COMPARE_METRICS = ("decode_tok_s", "ttft_ms", "e2e_long_s", "peak_rss_gb", "peak_gpu_mem_gb", "weights_gb",
                   "load_read_s")


def compare(a: dict, b: dict) -> list[dict]:
    """Rows present in both runs (matched on model, variant, batch size, lengths) with B/A ratios."""
    def key(r):
        return (r["model"], r["variant"], r.get("decode_mode") or "eager", r.get("kv_cache") or "default",
                r["batch_size"], r["prompt_tokens"], r["new_tokens"])
    index_a = {key(r): r for r in a["rows"]}
    out = []
    for rb in b["rows"]:
        ra = index_a.get(key(rb))
        if ra is None:
            continue
        entry = {"model": model_label(rb), "variant": rb["variant"], "decode": rb.get("decode_mode") or "eager",
                 "bs": rb["batch_size"],
                 "prompt": rb["prompt_tokens"], "new": rb["new_tokens"], "status": f"{ra['status']}/{rb['status']}"}
        for m in COMPARE_METRICS:
            va, vb = ra.get(m), rb.get(m)
            entry[m] = (vb / va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        out.append(entry)
    return out


def format_table(rows: list[dict], floatfmt: str = "{:.3g}") -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[c for c in cols]] + [["-" if r[c] is None else (floatfmt.format(r[c]) if isinstance(r[c], float)
                                                              else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
