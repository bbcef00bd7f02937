"""Reliability measurements of the web app (issue #8): a load test through gradio_client and memory return.

    # 16 sessions x 10 turns + leak check
    python -m benchmarks.experiments.reliability load   --out results/reliability-cpu
    # load/unload every variant 5 times
    python -m benchmarks.experiments.reliability memory --out results/reliability-cpu
    python -m benchmarks.experiments.reliability all    --out results/reliability-cpu

``load`` starts ``launch.py`` (the default model, smollm2-135m-instruct in bf16, default flags) on a free loopback
port and drives its ``/chat`` endpoint with one ``gradio_client.Client`` per session: 20 requests from 4 sessions
at once, then ``sessions`` sessions at once with ``turns`` turns each (every turn sends the session's own
history), then 4 sessions again up to ``total`` (200). The server's resident memory (psutil on its pid) is taken
after request 20 and after request ``total``: a leak would show as growth between the two.

``memory`` loads and unloads each variant ``cycles`` times in this process through the ModelManager and records
the process RSS before, with and after each load (after one warm-up cycle per variant, which imports the
variant's libraries — memory that is never given back, by design of Python's import system).

Each command writes its section into ``summary.json`` in ``--out`` (other sections are kept), with the machine,
the date and the git commit it was measured on.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

from ..environment import cpu_model, git_info
from ..results import percentile
from .common import DEFAULT_MODEL, LaunchedApp

MB = 1024 ** 2
# 10 short user turns: replies are capped at a few tokens, so the prompt grows by ~15 tokens per turn
TURNS = ["Hi! Who are you?", "What is the capital of France?", "And of Japan?", "Name a prime number.",
         "What colour is the sky?", "Say hello in Spanish.", "What is 2 + 2?", "Name a fruit.",
         "Thank you!", "Goodbye."]


def machine() -> dict:
    import psutil
    import torch

    git = git_info()      # PLAYGROUND_GIT_COMMIT on a copy of the tree (the GPU machine's .git, if any, is stale)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git["commit"], "git_dirty": git["dirty"],
            "cpu": cpu_model(), "cpu_cores_logical": psutil.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__}


# ---- the server ------------------------------------------------------------------------------------------------
Server = LaunchedApp        # ``with server(*launch_args) as srv``: srv.url, srv.rss(), srv.output


def server(*args: str, env: dict | None = None) -> LaunchedApp:
    return LaunchedApp(*args, env=env)


# ---- load test ---------------------------------------------------------------------------------------------------
def chat_once(client, message: str, history: list[dict], max_new_tokens: int, model: str = DEFAULT_MODEL,
              variant: str = "bf16") -> dict:
    """One /chat request; returns the client-side timings and the server's stats (or the error)."""
    from gradio_client.utils import Status
    t0 = time.time()
    job = client.submit(model=model, variant=variant, message=message, history=history, max_new_tokens=max_new_tokens,
                        greedy=True, system_prompt="You are a helpful assistant.", api_name="/chat")
    started = first = None
    while not job.done():
        st = job.status()
        if started is None and st.code in (Status.PROCESSING, Status.ITERATING, Status.PROGRESS):
            started = st.time.timestamp() if st.time else time.time()    # when process_starts arrived
        if first is None and job.outputs():
            first = time.time()
        time.sleep(0.005)
    rec = {"submit": t0}
    try:
        reply, stats = job.result()
    except Exception as exc:  # noqa: BLE001 - every failure is counted and kept
        rec.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500], end=time.time())
        return rec
    end = time.time()
    rec.update(ok=True, reply=reply, stats=stats, end=end, latency_s=end - t0,
               first_output_s=(first - t0) if first else None)
    if started is None:   # the status went straight past PROCESSING: estimate from the engine's own TTFT
        started = (first or end) - stats.get("ttft_s", 0.0)
    rec["queue_wait_s"] = max(0.0, started - t0)
    return rec


def expected_prompt_tokens(history: list[dict], message: str, system: str = "You are a helpful assistant.") -> int:
    """What the server must count for this conversation if it used exactly this session's history."""
    from transformers import AutoTokenizer

    from playground.catalog import resolve
    tok = _TOKENIZERS.get(DEFAULT_MODEL)
    if tok is None:
        tok = _TOKENIZERS[DEFAULT_MODEL] = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL).path)
    conv = [{"role": "system", "content": system}] + history + [{"role": "user", "content": message}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return len(ids)


_TOKENIZERS: dict = {}


def load_test(srv: Server, sessions: int = 16, turns: int = 10, max_new_tokens: int = 4, warm: int = 20,
              total: int = 200, settle_s: float = 1.0, rounds: int = 1) -> dict:
    """Drive ``srv`` as described in the module docstring; returns the figures (and the raw per-request rows).

    Requests 1..``warm`` come from 4 sessions at once (``warm`` / 4 turns each), so that by the first memory
    sample the server has already served overlapping chats of growing length on several worker threads: what
    is measured after that is growth with the number of requests, not the cost of first use. Then ``sessions``
    sessions x ``turns`` turns at once (``rounds`` times), then 4 sessions again up to ``total``."""
    from gradio_client import Client

    samples = []          # (requests done, rss bytes)
    done = [0]
    lock = threading.Lock()
    expected_prompt_tokens([], "warm")  # load the tokenizer here: transformers' lazy imports race in threads

    def count():
        with lock:
            done[0] += 1
            samples.append((done[0], srv.rss()))

    def phase(n: int, n_turns: int, tag: str) -> list[dict]:
        """``n`` sessions at once, each its own Client (session hash) and history, ``n_turns`` turns each."""
        per_session: list[list[dict]] = [[] for _ in range(n)]
        clients = [Client(srv.url, verbose=False) for _ in range(n)]
        barrier = threading.Barrier(n)

        def session(k: int) -> None:
            history: list[dict] = []
            barrier.wait()
            for turn in range(n_turns):
                message = f"[{tag} {k}] {TURNS[turn % len(TURNS)]}"
                rec = chat_once(clients[k], message, history, max_new_tokens)
                rec.update(phase=tag, session=k, turn=turn, history_len=len(history),
                           expected_prompt_tokens=expected_prompt_tokens(history, message))
                per_session[k].append(rec)
                count()
                if rec["ok"]:
                    history = history + [{"role": "user", "content": message},
                                         {"role": "assistant", "content": rec["reply"]}]

        threads = [threading.Thread(target=session, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for s in per_session for r in s]

    t_start = time.time()
    records = phase(4, max(1, warm // 4), "warm-up")
    time.sleep(settle_s)
    rss_warm, n_warm = srv.rss(), len(records)
    t_conc = time.time()
    concurrent = []
    for r in range(rounds):
        concurrent += phase(sessions, turns, "concurrent" if rounds == 1 else f"concurrent{r}")
    conc_wall = time.time() - t_conc
    records += concurrent
    rest = total - len(records)
    if rest > 0:
        records += phase(4, max(1, rest // 4), "tail")
    time.sleep(settle_s)
    rss_end = srv.rss()
    warm = n_warm

    ok = [r for r in concurrent if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    wait = [r["queue_wait_s"] for r in ok]
    first = [r["first_output_s"] for r in ok if r.get("first_output_s")]
    mismatched = [(r["phase"], r["session"], r["turn"], r["stats"]["prompt_tokens"], r["expected_prompt_tokens"])
                  for r in records if r["ok"] and r["stats"]["prompt_tokens"] != r["expected_prompt_tokens"]]
    errors = [r["error"] for r in records if not r["ok"]]
    rnd = lambda x, d=3: None if x is None else round(x, d)  # noqa: E731
    growth = (rss_end - rss_warm) / rss_warm
    return {
        "what": f"{sessions} concurrent gradio_client sessions x {turns} turns on /chat ({DEFAULT_MODEL} bf16, "
                f"greedy, max_new_tokens={max_new_tokens}, each turn sends the session's whole history; figures "
                f"of these {len(concurrent)} requests), after {warm} requests from 4 sessions at once and before "
                f"{len(records) - warm - len(concurrent)} more ({len(records)} in all; RSS after the warm-up and at "
                f"the end)",
        "server": "launch.py default flags (concurrency limit 2, queue 64) on loopback, pid RSS via psutil",
        "requests": len(records), "concurrent_requests": len(concurrent), "errors": len(errors),
        "error_samples": errors[:5],
        "latency_s": {"p50": rnd(percentile(lat, 50)), "p90": rnd(percentile(lat, 90)),
                      "max": rnd(max(lat, default=None))},
        "queue_wait_s": {"p50": rnd(percentile(wait, 50)), "p90": rnd(percentile(wait, 90)),
                         "max": rnd(max(wait, default=None))},
        "first_output_s": {"p50": rnd(percentile(first, 50)), "p90": rnd(percentile(first, 90))},
        "server_ttft_s_p50": rnd(percentile([r["stats"]["ttft_s"] for r in ok], 50)),
        "server_new_tokens_total": sum(r["stats"]["new_tokens"] for r in ok),
        "concurrent_wall_s": rnd(conc_wall, 1), "total_wall_s": rnd(time.time() - t_start, 1),
        "throughput_req_s": rnd(len(concurrent) / conc_wall if conc_wall else None),
        "prompt_token_mismatches": mismatched[:10],
        "rss_mb_after": {str(warm): rnd(rss_warm / MB, 1), str(len(records)): rnd(rss_end / MB, 1)},
        "rss_growth_fraction": rnd(growth, 4),
        "rss_samples_mb": [[n, rnd(b / MB, 1)] for n, b in samples[:: max(1, len(samples) // 40)]],
    }


# ---- memory return ---------------------------------------------------------------------------------------------
# On CPU the process RSS after an unload moves within a band of tens of MB from one cycle to the next with no trend
# (fp32, 14 cycles: 352-453 MB), while glibc's own count of bytes in use comes back to the same value every time:
# glibc keeps part of the freed memory resident in its arenas (malloc_trim gives back whole free pages, not the
# partly used ones), and how much depends on where the next allocations landed. So RSS is judged over the whole
# series with that band as its tolerance, and the allocator's in-use bytes (the CPU counterpart of
# torch.cuda.memory_allocated) are judged per cycle.
RSS_BAND_MB = 64


class _MallInfo2(__import__("ctypes").Structure):
    _fields_ = [(n, __import__("ctypes").c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not got back (mallinfo2: uordblks + hblkhd); None elsewhere."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def _slope(ys: list[float]) -> float:
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sum((x - mx) ** 2 for x in range(n))


def _series(cyc: list[dict], before: str, loaded: str, after: str) -> dict:
    taken = sum(c[loaded] - c[before] for c in cyc)
    returned = sum(c[loaded] - c[after] for c in cyc)
    per = [(c[loaded] - c[after]) / (c[loaded] - c[before]) for c in cyc if c[loaded] - c[before] > 0]
    # of all the memory the loads took, the share the unloads gave back; the sum telescopes to
    # 1 - (after the last unload - before the first load) / total taken
    return {"taken_mb_median": round(statistics.median(c[loaded] - c[before] for c in cyc), 1),
            "returned_fraction": round(returned / taken, 4) if taken > 0 else None,
            "net_growth_mb": round(cyc[-1][after] - cyc[0][before], 1),
            # the typical level after an unload against the start: one noisy last sample cannot move it
            "median_growth_mb": round(statistics.median(c[after] for c in cyc) - cyc[0][before], 1),
            # the worst level after an unload against the level before the first load (the GPU criterion)
            "max_growth_mb": round(max(c[after] for c in cyc) - cyc[0][before], 1),
            # a leak of L per load makes the level after each unload climb by L a cycle: the least-squares slope
            # of those levels (a level that jumps between two values, as glibc's arenas make it, has none)
            "trend_mb_per_cycle": round(_slope([c[after] for c in cyc]), 1),
            "per_cycle_min": round(min(per), 4) if per else None, "per_cycle_max": round(max(per), 4) if per else None}


def resolve_model(model: str, device: str) -> str:
    """A catalog key, Hugging Face id or folder as it is; ``random:<arch>`` built (once) into its folder."""
    from ..config import RANDOM_PREFIX
    if model.startswith(RANDOM_PREFIX):
        from .random_weights import ensure_random_model
        return ensure_random_model(model[len(RANDOM_PREFIX):], device)[0]
    return model


def nvml_process_bytes() -> int | None:
    """What the driver charges this process on its GPUs (nvidia-smi's figure), or the growth of the GPUs' used
    memory since ``capture_nvml_baseline`` where the driver does not list processes; None without NVML."""
    from ..trackers import _BASELINE, Nvml, visible_nvml_indices
    import torch
    nvml = Nvml.get()
    if nvml is None:
        return None
    used = nvml.process_used(os.getpid())
    if used is not None:
        return used
    return max(0, nvml.device_used(visible_nvml_indices(torch.cuda.device_count())) - _BASELINE.get("used", 0))


def memory_return(variants: list[str], cycles: int = 5, model: str = DEFAULT_MODEL, device: str = "cpu",
                  fast_modes: tuple[str, ...] = ("auto",), on_variant=None) -> dict:
    """Load and unload each variant ``cycles`` times (after one warm-up cycle): process RSS and malloc's in-use
    bytes on CPU; on a GPU also the CUDA allocator (torch.cuda.memory_allocated) and what NVML charges the
    process (``nvml``, nvidia-smi's figure, CUDA context included). With several ``fast_modes`` each variant is
    cycled once per mode (rows ``<variant> fast=<mode>``). ``on_variant(out)`` is called after each row (the CLI
    writes the summary then, so that a run stopped at a time limit keeps the rows it finished)."""
    from playground.manager import ModelManager, release_memory
    from playground.memory import rss_bytes
    from playground.variants import VariantOptions

    cuda = device.startswith("cuda")
    if cuda:
        from .trackers import capture_nvml_baseline
        capture_nvml_baseline()
    path = resolve_model(model, device)

    def sample() -> dict:
        d = {"rss": rss_bytes() / MB}
        inuse = malloc_in_use()
        if inuse is not None:
            d["malloc"] = inuse / MB
        if cuda:
            import torch
            d["cuda"] = torch.cuda.memory_allocated() / MB
            d["cuda_reserved"] = torch.cuda.memory_reserved() / MB
            nv = nvml_process_bytes()
            if nv is not None:
                d["nvml"] = nv / MB
        return d

    mm = ModelManager(device=device, budget_bytes=1 << 62)
    gpu_what = (", CUDA allocator (torch.cuda.memory_allocated, memory_reserved) and NVML (what the driver charges "
                "the process: nvidia-smi)") if cuda else ""
    out = {"what": f"{model}: each variant loaded and unloaded {cycles} times through the ModelManager after one "
                   f"warm-up cycle, in one process; process RSS, glibc malloc in-use bytes (mallinfo2){gpu_what}",
           "model": model, "device": device, "fast_decode_modes": list(fast_modes),
           "rss_band_mb": RSS_BAND_MB, "variants": {}}
    for variant in variants:
        for mode in fast_modes:
            key = variant if len(fast_modes) == 1 else f"{variant} fast={mode}"
            options = VariantOptions(fast_decode=mode)
            t0 = time.perf_counter()
            try:
                mm.get(path, variant, options=options)   # warm-up: imports the libraries, fills caches, compiles
            except Exception as exc:  # noqa: BLE001 - a variant that cannot load here is reported, not fatal
                out["variants"][key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            mm.unload(path, variant)
            gc.collect()
            cyc, fast_mode = [], None
            for _ in range(cycles):
                release_memory()
                before = sample()
                lm = mm.get(path, variant, options=options)
                loaded = sample()
                weights, load_s = lm.stats.weights_bytes, lm.stats.load_s
                fast_mode = lm.fast.info.mode if lm.fast is not None else "eager"
                del lm
                mm.unload(path, variant)           # drops the references, gc, empty_cache, malloc_trim
                after = sample()
                c = {f"{k}_{when}_mb": round(v[k], 1) for when, v in (("before", before), ("loaded", loaded),
                                                                        ("after", after)) for k in v}
                cyc.append(dict(c, load_s=round(load_s, 2)))
            row = {"weights_mb": round(weights / MB, 1), "decoder": fast_mode,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "unreturned": [f"{u.label}: {u.bytes / MB:.0f} MB held by {u.held_by}" for u in mm.unreturned]}
            for k in ("rss", "malloc", "cuda", "cuda_reserved", "nvml"):
                if f"{k}_before_mb" in cyc[0]:
                    row[k] = _series(cyc, f"{k}_before_mb", f"{k}_loaded_mb", f"{k}_after_mb")
            row["cycles"] = cyc
            out["variants"][key] = row
            if on_variant is not None:
                on_variant(out)
    out["end"] = {k: round(v, 1) for k, v in sample().items()}
    return out


# ---- summary file ------------------------------------------------------------------------------------------------
def write_section(out_dir: Path, name: str, section: dict) -> Path:
    from ..results import atomic_write
    path = Path(out_dir) / "summary.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    section = dict(section, measured_on=machine())
    data[name] = section
    atomic_write(path, json.dumps(data, indent=1, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.reliability",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["load", "memory", "all"])
    ap.add_argument("--out", default="results/reliability-cpu")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--total", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--variants", default="fp32,bf16,fp16,int8,nf4,fp4,gptq,awq")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="memory: a catalog key, Hugging Face id, folder or random:<arch> (default %(default)s)")
    ap.add_argument("--fast-decode", default="auto",
                    help="memory: comma-separated fast_decode modes to cycle each variant in (auto, on, off)")
    ap.add_argument("--print-only", action="store_true", help="print the JSON, do not write summary.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    if args.what in ("load", "all"):
        with server("--device", args.device) as srv:
            results["load_test"] = load_test(srv, args.sessions, args.turns, args.max_new_tokens, total=args.total)
    if args.what in ("memory", "all"):
        results["memory_return"] = memory_return([v for v in args.variants.split(",") if v], args.cycles,
                                                 model=args.model, device=args.device,
                                                 fast_modes=tuple(m for m in args.fast_decode.split(",") if m),
                                                 on_variant=None if args.print_only else
                                                 lambda part: write_section(Path(args.out), "memory_return", part))
    for name, section in results.items():
        if args.print_only:
            print(json.dumps({name: section}, default=str))
        else:
            print(f"wrote {name} to {write_section(Path(args.out), name, section)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
