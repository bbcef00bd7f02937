"""``python -m benchmarks run | report | compare | architectures``.

    python -m benchmarks run --model smollm2-135m-instruct --variants bf16,int8,nf4 --prompt-tokens 128 \\
        --new-tokens 64 --repeats 3 --device cpu --out results/NAME
    python -m benchmarks run --model random:mistral-7b --variants bf16,nf4 --device cuda --out results/mistral
    python -m benchmarks report results/NAME          # regenerate report.html from results.json
    python -m benchmarks compare results/A results/B  # B ÷ A ratios of the rows both have
    python -m benchmarks serve --endpoint http://127.0.0.1:8000/v1 --concurrency 1,4 --out results/NAME  # a server

Bad arguments end with exit status 2 and one line saying why.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

from playground.errors import OneLineArgumentParser, usage_error
from playground.placement import MAX_MEMORY_HELP

PROG = "benchmarks"         # the name in front of its error lines: "benchmarks: error: ..."
_fail = partial(usage_error, prog=PROG)   # print "benchmarks: error: MESSAGE", return exit status 2


class OneLineParser(OneLineArgumentParser):
    error_prog = PROG


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _variant_options(args) -> dict:
    """The run's VariantOptions fields that differ from the defaults (a resumed run compares them)."""
    opts = {"kernel": args.kernel} if args.kernel else {}
    if args.tune_kernels != "auto":
        opts["tune_kernels"] = args.tune_kernels
    return opts


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m benchmarks", description="Benchmark the playground's variants.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    r = sub.add_parser("run", help="run a sweep")
    r.add_argument("--model", action="append", required=True,
                   help="catalog key, local folder, hub id or random:<architecture>; repeat for several")
    r.add_argument("--variants", type=_csv, default=["bf16"], help="comma list, e.g. bf16,int8,nf4,gptq,awq")
    r.add_argument("--batch-sizes", type=_csv, default=["1"])
    r.add_argument("--prompt-tokens", type=_csv, default=["512"])
    r.add_argument("--new-tokens", type=_csv, default=["256"])
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--max-memory", default=None, metavar="auto|0=70GiB,1=70GiB", help=MAX_MEMORY_HELP)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--memory-cap-gb", type=float, default=None,
                   help="make allocations beyond this fail (a real out-of-memory, recorded as an oom row)")
    r.add_argument("--random-weights", action="store_true", help="read every --model as an architecture name")
    r.add_argument("--no-overhead-check", action="store_true", help="skip the bare model.generate comparison")
    r.add_argument("--decode-modes", type=_csv, default=["auto"],
                   help="comma list of auto (fast on CUDA except int8, eager on CPU), "
                        "fast (static cache + compiled step, q/k/v and gate/up fused where they are plain Linears), "
                        "fast-unfused (the same without the fusion), fast-tinygemm (gptq/awq: the same with "
                        "tinygemm instead of the Triton GEMV for one-row products), "
                        "eager; each gives its own rows, e.g. eager,fast")
    r.add_argument("--peer", type=_csv, default=[], metavar="transformers-static",
                   help="add rows of another implementation on the same model, prompt and tokens: "
                        "transformers-static = transformers' generate(cache_implementation='static'), so every "
                        "table shows x transformers beside the roofline fraction")
    r.add_argument("--kv-cache", type=_csv, default=["default"],
                   help="comma list of KV-cache storage: default (model dtype), int8 (HQQ), int4, int2 (quanto); "
                        "each gives its own rows; a quantized cache always decodes eagerly")
    r.add_argument("--kernel", default=None,
                   help="gptq/awq kernel: tinygemm (CUDA/CPU int4 matmul of torch), triton-gemv (tinygemm with "
                        "playground's Triton GEMV for one-row products, CUDA) or a gptqmodel backend name")
    r.add_argument("--tune-kernels", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="coordinate-descent tuning of the compiled decode step's kernels (gpt-fast's setting): "
                        "a longer first compile; the rows' decode_mode says 'tuned kernels'. auto (default): "
                        "for int8-wo only, whose one-row products are slow untuned; --tune-kernels alone: on")
    r.add_argument("--timeout-s", type=float, default=None, help="per (model, variant) worker")
    r.add_argument("--time-budget-s", type=float, default=None,
                   help="the whole run: each worker gets the time left; what it cuts is an error row (--resume "
                        "measures it again), so a run under an outer time limit ends with every row written")
    r.add_argument("--quality", action="store_true",
                   help="also measure perplexity (English, Chinese) and multiple-choice accuracy of each "
                        "real-weight variant (random weights get none)")
    r.add_argument("--quality-tokens", type=int, default=None, metavar="N",
                   help="English perplexity tokens (Chinese: half; default 4096)")
    r.add_argument("--quality-items", type=int, default=None, metavar="N",
                   help="multiple-choice items (ARC-Easy, at most 200; default 100)")
    r.add_argument("--out", default=None, help="results folder (default results/run-DATE)")
    r.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    r.add_argument("--resume", action="store_true",
                   help="continue the run already in --out (same settings): keep its ok rows, measure what is "
                        "missing or failed, append the new rows")
    p = sub.add_parser("report", help="regenerate report.html from results.json")
    p.add_argument("path")
    p.add_argument("--plotly-js", default=None, metavar="FILE",
                   help="load plotly's script from FILE (written there if missing) instead of inlining its 4.6 MB: "
                        "for reports kept side by side, e.g. --plotly-js results/plotly.min.js")
    c = sub.add_parser("compare", help="ratios B ÷ A of two runs")
    c.add_argument("a")
    c.add_argument("b")
    sub.add_parser("architectures", help="list the random-weight architectures")
    from .serving import add_parser as add_serve_parser
    add_serve_parser(sub)
    return ap


def _quality_options(args) -> dict:
    opts = {}
    if args.quality_tokens is not None:
        opts.update(ppl_en_tokens=args.quality_tokens, ppl_zh_tokens=args.quality_tokens // 2)
    if args.quality_items is not None:
        opts["mc_items"] = args.quality_items
    return opts


def _quality_text(row: dict) -> str:
    if row.get("quality_error"):
        return f"; quality: {row['quality_error'][:200]}"
    parts = [f"{label} {row[c]:.{d}f}" for c, label, d in (("perplexity", "ppl en", 2), ("perplexity_zh", "ppl zh", 2),
                                                           ("accuracy", "acc", 3)) if row.get(c) is not None]
    return ("; " + ", ".join(parts)) if parts else ""


def cmd_run(args) -> int:
    from .config import ConfigError, RunConfig
    out = args.out or f"results/run-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and args.overwrite:
        return _fail("--resume keeps the rows in --out, --overwrite replaces them: pass one of them")
    if (Path(out) / "results.json").exists() and not (args.overwrite or args.resume):
        return _fail(f"{out} already holds results.json: choose another --out, pass --resume to continue it "
                     f"or --overwrite to replace it")
    try:
        cfg = RunConfig(models=args.model, variants=args.variants, batch_sizes=args.batch_sizes,
                        prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                        warmup=args.warmup, device=args.device, out=out, seed=args.seed,
                        memory_cap_gb=args.memory_cap_gb, max_memory=args.max_memory,
                        random_weights=args.random_weights,
                        overhead_check=not args.no_overhead_check, timeout_s=args.timeout_s,
                        time_budget_s=args.time_budget_s, name=Path(out).name,
                        quality=args.quality, quality_options=_quality_options(args),
                        decode_modes=args.decode_modes + [p for p in args.peer if p not in args.decode_modes],
                        kv_cache=args.kv_cache,
                        variant_options=_variant_options(args))
    except ConfigError as exc:
        return _fail(str(exc))
    from tqdm.auto import tqdm

    from .results import ResultsError, load_results
    from .runner import ResumeError, resolve_device, resume_plan, run_sweep
    previous = None
    if args.resume and (Path(out) / "results.json").exists():
        try:
            previous = load_results(out)
            kept, _ = resume_plan(previous, cfg, resolve_device(cfg.device))
        except (ResultsError, ResumeError) as exc:
            return _fail(str(exc))
        print(f"resuming {out}: keeping {len(kept)} of {len(previous['rows'])} rows", file=sys.stderr)
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            return _fail(f"--device {cfg.device} but no CUDA GPU is available here")
    total = cfg.units()
    bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def progress(fraction, message):
        bar.n = min(total, round(fraction * total))
        bar.set_description_str(message[:60])
        bar.refresh()

    def on_row(row):
        if row["status"] == "ok":
            tqdm.write(f"  {row['model']} [{row['variant']}] bs={row['batch_size']} p={row['prompt_tokens']} "
                       f"n={row['new_tokens']}: {row['decode_tok_s']:.1f} tok/s, ttft {row['ttft_ms']:.0f} ms, "
                       f"weights {row['weights_gb']:.3f} GB{_quality_text(row)}", file=sys.stderr)
        else:
            tqdm.write(f"  {row['model']} [{row['variant']}] bs={row['batch_size']}: {row['status']}: "
                       f"{row['error'][:200]}", file=sys.stderr)

    rows = run_sweep(cfg, on_row=on_row, progress=progress, argv=["python", "-m", "benchmarks", *sys.argv[1:]],
                     previous=previous)
    bar.close()
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} rows ok on {resolve_device(cfg.device)}; wrote {out}/results.csv, results.json, "
          f"report.html")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .results import ResultsError
    try:
        path = write_report(args.path, args.plotly_js)
    except ResultsError as exc:
        return _fail(str(exc))
    print(path)
    return 0


def cmd_compare(args) -> int:
    from .results import ResultsError, compare, format_table, load_results
    try:
        a, b = load_results(args.a), load_results(args.b)
    except ResultsError as exc:
        return _fail(str(exc))
    rows = compare(a, b)
    if not rows:
        return _fail("the two runs have no (model, variant, batch, prompt, new) in common")
    print(f"ratios B ÷ A   A = {args.a}   B = {args.b}   (tok/s > 1: B faster; time/memory < 1: B smaller)")
    print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()
    args = build_parser().parse_args(argv)
    if args.cmd == "architectures":
        from .random_weights import ARCH_DIR, list_architectures, load_architecture
        for name in list_architectures():
            a = load_architecture(name)
            print(f"random:{name:14s} {a.get('params_note', '')}  ({ARCH_DIR / (name + '.json')})")
        return 0
    if args.cmd == "serve":   # benchmarks/serving.py
        return args.func(args)
    return {"run": cmd_run, "report": cmd_report, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(_fail("interrupted"))
