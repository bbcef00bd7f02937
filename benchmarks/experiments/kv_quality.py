"""Perplexity cost of a quantized KV cache: ``python -m benchmarks.experiments.kv_quality --model M --variant bf16
--kv-cache default,int4 --context-tokens 1024 --scored-tokens 256 [--out DIR]``.

Each KV setting scores the same FLORES+ tokens, decoded through its cache after the same prefilled context
(``benchmarks.quality.kv_cache_perplexity``); ``delta_vs_default`` is the perplexity added by the quantization.
Writes ``kv_perplexity.json`` into ``--out`` when given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.kv_quality")
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kv-cache", default="default,int8,int4,int2", help="comma list (default is always measured)")
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--scored-tokens", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8, help="tokens fed per decoding step")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from playground.engine import KV_CACHE_OPTIONS
    kvs = [k.strip() for k in args.kv_cache.split(",") if k.strip()]
    bad = [k for k in kvs if k not in KV_CACHE_OPTIONS]
    if bad:
        print(f"kv_quality: error: unknown kv cache {', '.join(bad)} (choose from {', '.join(KV_CACHE_OPTIONS)})",
              file=sys.stderr)
        return 2
    if "default" not in kvs:
        kvs.insert(0, "default")
    from playground.manager import ModelManager

    from ..quality import kv_cache_perplexity
    from ..results import atomic_write
    lm = ModelManager(device=args.device).get(args.model, args.variant)
    rows = []
    for kv in kvs:
        t0 = time.perf_counter()
        r = kv_cache_perplexity(lm.model, lm.tokenizer, kv, context_tokens=args.context_tokens,
                                scored_tokens=args.scored_tokens, chunk=args.chunk)
        rows.append({"model": args.model, "variant": args.variant, "kv_cache": kv, "perplexity": r.ppl,
                     "nll": r.nll, "tokens": r.tokens, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{kv}: ppl {r.ppl:.4f} ({r.tokens} tokens, {rows[-1]['seconds']} s)", file=sys.stderr)
    base = rows[0]["perplexity"]
    for row in rows:
        row["delta_vs_default"] = row["perplexity"] - base
    result = {"settings": vars(args), "rows": rows}
    if args.out:
        atomic_write(Path(args.out) / "kv_perplexity.json", json.dumps(result, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
