"""Serving benchmark against an OpenAI-compatible endpoint: ``python -m benchmarks serve``.

    python -m benchmarks serve --endpoint http://127.0.0.1:8000/v1 --model NAME --concurrency 1,4,16 \\
        --requests 64 --prompt-tokens 512 --new-tokens 128 [--request-rate 2,8,inf] [--key-env VAR] --out results/NAME

For every (concurrency, request rate) level, ``--requests`` streamed chat requests are sent, at most
``concurrency`` in flight; with a finite rate they start at Poisson-distributed times (seeded), with ``inf`` as
soon as a slot is free. Every request goes through ``playground.endpoint_reply.stream_endpoint_reply`` (the same code
as the Chat tab), so TTFT, inter-token latency (gaps between streamed chunks) and end-to-end latency are measured
on the client. A level becomes one row of the usual results files (``device`` = ``endpoint:<url>``, ``variant`` =
``served``, ``batch_size`` = concurrency) with p50/p90/p99 of TTFT, ITL and end-to-end latency, request and output
token throughput and the error count; every request, failed ones included with their message, is kept in
``results.json`` under ``row["raw"]["requests"]``. The API key is read from ``--key-env`` and never written.

Prompts are cut from the text shipped in the repo, a different offset per request (so no two share a prefix):
with ``--tokenizer`` to exactly ``--prompt-tokens`` tokens of that tokenizer, otherwise to about 4 characters
per token; the server's own count (``usage.prompt_tokens``, chat template included) is in
``prompt_tokens_measured``. Servers stop at end-of-sequence unless told otherwise: ``--ignore-eos`` sends vLLM's /
llama.cpp's ``ignore_eos`` and ``min_tokens`` so every reply has ``--new-tokens`` tokens (``transformers serve``
rejects these fields).
"""
from __future__ import annotations

import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import ConfigError, _int_list
from .results import median, percentile, save_run
from .rows import Latency, ResultRow, Serving

CHARS_PER_TOKEN = 4


def _pos_ints(name: str, values, hi: int) -> list[int]:
    return _int_list(name, values, 1, hi)


def _rates(values) -> list[float]:
    values = [values] if isinstance(values, (int, float, str)) else list(values)
    out = []
    for v in values:
        try:
            fv = float(str(v).strip())
        except ValueError:
            raise ConfigError(f"request_rates: {v!r} is not a number (requests per second, or inf)") from None
        if not fv > 0:
            raise ConfigError(f"request_rates: {fv} must be positive (inf: send as fast as the concurrency allows)")
        out.append(fv)
    return out or [math.inf]


@dataclass
class ServeConfig:
    url: str
    model: str | None = None
    name: str | None = None                       # endpoint name (default host:port)
    concurrency: list[int] = field(default_factory=lambda: [1])
    request_rates: list[float] = field(default_factory=lambda: [math.inf])
    requests: int = 16                            # per level
    prompt_tokens: int = 128
    new_tokens: int = 64
    warmup: int = 1                               # requests before the first level, not recorded
    seed: int = 0
    key_env: str | None = None
    ignore_eos: bool = False
    tokenizer: str | None = None                  # catalog key / folder / hub id for exact prompt lengths
    timeout_s: float = 300.0
    out: str | None = None
    run_name: str | None = None
    kind: str = "serving"

    def __post_init__(self):
        from playground.errors import InvalidParameterError
        self.concurrency = _pos_ints("concurrency", self.concurrency, 4096)
        self.request_rates = _rates(self.request_rates)
        for name, lo, hi in (("requests", 1, 100000), ("prompt_tokens", 1, 131072), ("new_tokens", 1, 8192),
                             ("warmup", 0, 100), ("seed", 0, 2 ** 31)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        try:
            self.endpoint()
        except InvalidParameterError as exc:
            raise ConfigError(f"endpoint: {exc}") from None

    def endpoint(self):
        from playground.endpoints import Endpoint
        extra = {"ignore_eos": True, "min_tokens": self.new_tokens} if self.ignore_eos else {}
        return Endpoint(url=self.url, model=self.model, name=self.name, key_env=self.key_env,
                        timeout_s=self.timeout_s, extra_body=extra)

    def levels(self) -> list[tuple[int, float]]:
        return [(c, r) for r in self.request_rates for c in self.concurrency]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["request_rates"] = [r if math.isfinite(r) else "inf" for r in self.request_rates]
        d["url"] = self.endpoint().url
        return d


# ---- prompts -------------------------------------------------------------------------------------------------
def make_prompts(cfg: ServeConfig, count: int) -> tuple[list[str], dict]:
    """``count`` different prompts of about ``cfg.prompt_tokens`` tokens, and how they were cut."""
    from .generation import load_prompt_text
    text, rel, sha = load_prompt_text()
    rng = random.Random(cfg.seed)
    source = {"path": rel, "sha256": sha}
    if cfg.tokenizer:
        from playground.catalog import resolve
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(resolve(cfg.tokenizer).path)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        ids = ids * (cfg.prompt_tokens // len(ids) + 2)
        span = len(ids) - cfg.prompt_tokens
        prompts = [tok.decode(ids[o: o + cfg.prompt_tokens]) for o in (rng.randrange(span) for _ in range(count))]
        source["cut"] = f"{cfg.prompt_tokens} tokens of the {cfg.tokenizer} tokenizer"
        return prompts, source
    n = cfg.prompt_tokens * CHARS_PER_TOKEN
    text = text * (n // len(text) + 2)
    span = len(text) - n
    prompts = []
    for _ in range(count):
        o = rng.randrange(span)
        while o > 0 and not text[o - 1].isspace():   # start at a word
            o -= 1
        prompts.append(text[o: o + n])
    source["cut"] = f"{n} characters (~{CHARS_PER_TOKEN} per token; no --tokenizer)"
    return prompts, source


# ---- one request, one level ------------------------------------------------------------------------------------
def one_request(ep, client, prompt: str, params, index: int, t0: float) -> dict:
    """Send one streamed request; a failure is a record with ok=False and its message, never an exception."""
    from playground.endpoint_reply import stream_endpoint_reply
    from playground.errors import PlaygroundError
    rec = {"i": index, "ok": False, "start_s": round(time.perf_counter() - t0, 4)}
    try:
        last = None
        for last in stream_endpoint_reply(ep, [{"role": "user", "content": prompt}], None, params, client=client):
            pass
        st = last.stats
        rec.update(ok=True, ttft_ms=st.ttft_s * 1000, e2e_s=st.total_s, output_tokens=st.new_tokens,
                   prompt_tokens=st.prompt_tokens or None, token_count=st.token_count,
                   decode_tok_s=st.decode_tok_s or None, finish_reason=st.finish_reason, itl_s=st.itl_s)
    except PlaygroundError as exc:
        rec["error"] = ep.redact(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one request must not lose the others
        rec["error"] = ep.redact(f"{type(exc).__name__}: {exc}")
    rec["end_s"] = round(time.perf_counter() - t0, 4)
    return rec


def run_level(ep, client, prompts: list[str], params, concurrency: int, rate: float, seed: int,
              on_request: Callable[[dict], None] | None = None) -> tuple[list[dict], float]:
    """Send ``len(prompts)`` requests, at most ``concurrency`` at a time, arriving at ``rate`` per second
    (Poisson; inf = back to back). Returns the per-request records (in order) and the level's duration."""
    rng = random.Random(seed)
    records: list[dict | None] = [None] * len(prompts)
    slots = threading.Semaphore(concurrency)
    t0 = time.perf_counter()

    def job(i: int) -> None:
        try:
            records[i] = one_request(ep, client, prompts[i], params, i, t0)
            if on_request is not None:
                on_request(records[i])
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="serve-bench") as pool:
        next_at = 0.0
        for i in range(len(prompts)):
            if math.isfinite(rate):
                next_at += rng.expovariate(rate)
                delay = t0 + next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            slots.acquire()
            pool.submit(job, i)
    duration = time.perf_counter() - t0
    return [r for r in records if r is not None], duration


def _ms(v):
    return None if v is None else round(v, 3)


def level_row(cfg: ServeConfig, ep, model_label: str, concurrency: int, rate: float, records: list[dict],
              duration: float) -> dict:
    ok = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    ttft = [r["ttft_ms"] for r in ok]
    e2e = [r["e2e_s"] for r in ok]
    itl = [g * 1000 for r in ok for g in r.get("itl_s") or []]
    out_tokens = sum(r["output_tokens"] for r in ok)
    prompt_counts = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens")]
    sources = sorted({r["token_count"] for r in ok})
    row = ResultRow.new(model_label, "served", ep.device, concurrency, cfg.prompt_tokens, cfg.new_tokens,
                        status="ok" if ok else "error", timed_with="client (streamed chat requests)")
    row.latency = Latency(ttft_ms=percentile(ttft, 50), ttft_ms_p90=percentile(ttft, 90),
                          itl_p50_ms=percentile(itl, 50), itl_p90_ms=percentile(itl, 90), e2e_s=percentile(e2e, 50),
                          decode_tok_s=median([r["decode_tok_s"] for r in ok if r.get("decode_tok_s")]))
    row.serving = Serving(
        concurrency=concurrency, request_rate=rate if math.isfinite(rate) else None, requests=len(records),
        errors=len(failed), duration_s=round(duration, 4), req_s=len(ok) / duration if duration > 0 else None,
        tok_s=out_tokens / duration if duration > 0 else None, ttft_ms_p99=percentile(ttft, 99),
        itl_p99_ms=percentile(itl, 99), e2e_p50_s=percentile(e2e, 50), e2e_p90_s=percentile(e2e, 90),
        e2e_p99_s=percentile(e2e, 99),
        prompt_tokens_measured=(sum(prompt_counts) / len(prompt_counts)) if prompt_counts else None,
        output_tokens_mean=(out_tokens / len(ok)) if ok else None, token_count="+".join(sources) if sources else None)
    if failed:
        messages = list(dict.fromkeys(r["error"] for r in failed))
        row.set(error=f"{len(failed)} of {len(records)} requests failed: " + " | ".join(messages[:3])
                + (f" (+{len(messages) - 3} more kinds)" if len(messages) > 3 else ""))
    row.raw["requests"] = [{k: (_ms(v) if isinstance(v, float) else v) for k, v in r.items() if k != "itl_s"}
                           for r in records]
    return row.to_dict()


# ---- the run ---------------------------------------------------------------------------------------------------
def run_serving(cfg: ServeConfig, argv: list[str] | None = None, on_row: Callable[[dict], None] | None = None,
                on_request: Callable[[dict], None] | None = None, say: Callable[[str], None] | None = None,
                cancel: threading.Event | None = None) -> dict:
    """Run every level of ``cfg``; returns the results data (also written to ``cfg.out`` after each level)."""
    import httpx

    from playground.engine import GenerationParams

    from .environment import collect_environment
    say = say or (lambda m: None)
    ep = cfg.endpoint()
    out = Path(cfg.out) if cfg.out else None
    env = collect_environment(ep.device, argv)
    client = httpx.Client(timeout=httpx.Timeout(ep.timeout_s, connect=10.0),
                          limits=httpx.Limits(max_connections=max(cfg.concurrency) + 4,
                                              max_keepalive_connections=max(cfg.concurrency) + 4))
    served: list[str] = []
    try:
        served = ep.list_models(client)
        env["endpoint"] = {"url": ep.url, "name": ep.name, "models": served, "api_key": ep.key_source}
    except Exception as exc:  # noqa: BLE001 - recorded; the requests will say what is wrong
        env["endpoint"] = {"url": ep.url, "name": ep.name, "models_error": ep.redact(str(exc)),
                           "api_key": ep.key_source}
    model_label = cfg.model or (served[0] if served else ep.name)
    total = sum(cfg.requests for _ in cfg.levels())
    prompts, source = make_prompts(cfg, cfg.warmup + total)
    params = GenerationParams(max_new_tokens=cfg.new_tokens, temperature=0.0, greedy=True, seed=cfg.seed)
    rows: list[dict] = []
    data = {"config": cfg.to_dict(), "environment": env, "rows": rows, "prompt_source": source,
            "finished": None, "cancelled": False}

    try:
        for i in range(cfg.warmup):
            rec = one_request(ep, client, prompts[i], params, -1 - i, time.perf_counter())
            say(f"warm-up request {i + 1}/{cfg.warmup}: " + ("ok" if rec["ok"] else rec["error"]))
        used = cfg.warmup
        for li, (conc, rate) in enumerate(cfg.levels()):
            if cancel is not None and cancel.is_set():
                data["cancelled"] = True
                break
            say(f"level {li + 1}/{len(cfg.levels())}: concurrency {conc}, rate "
                f"{'inf' if not math.isfinite(rate) else f'{rate:g}/s'}, {cfg.requests} requests")
            level_prompts = prompts[used: used + cfg.requests]
            used += cfg.requests
            records, duration = run_level(ep, client, level_prompts, params, conc, rate, cfg.seed + li, on_request)
            row = level_row(cfg, ep, model_label, conc, rate, records, duration)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            save_run(out, data, report=True)
    finally:
        client.close()
        data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if hasattr(os, "getloadavg"):
            env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        save_run(out, data, report=True)
    return data


def row_line(row: dict) -> str:
    """One line per level for the terminal."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    rate = "inf" if row.get("request_rate") is None else f"{row['request_rate']:g}/s"
    return (f"  concurrency {row['concurrency']} rate {rate}: {row['requests'] - row['errors']}/{row['requests']} ok, "
            f"{f(row['req_s'], '.2f')} req/s, {f(row['tok_s'], '.1f')} tok/s, TTFT p50/p90/p99 "
            f"{f(row['ttft_ms'], '.0f')}/{f(row['ttft_ms_p90'], '.0f')}/{f(row['ttft_ms_p99'], '.0f')} ms, ITL p50 "
            f"{f(row['itl_p50_ms'], '.0f')} ms, e2e p50/p99 {f(row['e2e_p50_s'], '.2f')}/{f(row['e2e_p99_s'], '.2f')} s"
            + (f"; {row['error'][:200]}" if row.get("error") else ""))


# ---- command line (python -m benchmarks serve) -----------------------------------------------------------------
def add_parser(sub) -> None:
    """The ``serve`` subcommand, added to ``python -m benchmarks``'s subparsers."""
    def csv(value: str) -> list[str]:
        return [v.strip() for v in value.split(",") if v.strip()]
    s = sub.add_parser("serve", help="serving benchmark against an OpenAI-compatible endpoint")
    s.add_argument("--endpoint", required=True, metavar="URL", help="base URL, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model", default=None, help="model name to request (default: the server's first listed)")
    s.add_argument("--key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    s.add_argument("--concurrency", type=csv, default=["1"], help="comma list of requests in flight, e.g. 1,4,16")
    s.add_argument("--request-rate", type=csv, default=["inf"],
                   help="comma list of requests per second (Poisson arrivals); inf: back to back (default)")
    s.add_argument("--requests", type=int, default=16, help="requests per level (default %(default)s)")
    s.add_argument("--prompt-tokens", type=int, default=128)
    s.add_argument("--new-tokens", type=int, default=64)
    s.add_argument("--warmup", type=int, default=1, help="unrecorded requests before the first level")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos/min_tokens (vLLM, llama.cpp) so every reply has --new-tokens tokens")
    s.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="cut prompts to exact token counts with this model's tokenizer (catalog key, folder, hub id)")
    s.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for the next chunk of a reply")
    s.add_argument("--out", default=None, help="results folder (default results/serve-DATE)")
    s.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import sys

    from playground.errors import usage_error
    out = args.out or f"results/serve-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(out) / "results.json").exists() and not args.overwrite:
        return usage_error(f"{out} already holds results.json: choose another --out or pass --overwrite", "benchmarks")
    try:
        cfg = ServeConfig(url=args.endpoint, model=args.model, concurrency=args.concurrency,
                          request_rates=args.request_rate, requests=args.requests, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, warmup=args.warmup, seed=args.seed, key_env=args.key_env,
                          ignore_eos=args.ignore_eos, tokenizer=args.tokenizer, timeout_s=args.timeout_s, out=out,
                          run_name=Path(out).name)
    except ConfigError as exc:
        return usage_error(str(exc), "benchmarks")
    if cfg.key_env and not os.environ.get(cfg.key_env):
        return usage_error(f"--key-env {cfg.key_env}: that environment variable is not set", "benchmarks")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    data = run_serving(cfg, argv=["python", "-m", "benchmarks", *sys.argv[1:]], say=say,
                       on_row=lambda row: say(row_line(row)))
    rows = data["rows"]
    failed = sum(r.get("errors") or 0 for r in rows)
    total = sum(r.get("requests") or 0 for r in rows)
    print(f"{len(rows)} level(s), {total - failed}/{total} requests ok against {cfg.endpoint().url}; wrote "
          f"{out}/results.csv, results.json, report.html")
    return 0 if rows and failed < total else 1
