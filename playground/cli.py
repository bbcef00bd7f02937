"""Terminal chat: ``python -m playground.cli`` (interactive) or ``--prompt "..."`` (one shot).

Interactive commands: ``clear`` (new conversation), ``stream`` (toggle streaming), ``exit``.
Ctrl+C stops the current reply, not the program.
"""
from __future__ import annotations

import argparse
import os
import sys

from .catalog import CATALOG, DEFAULT_MODEL
from .errors import OneLineArgumentParser, PlaygroundError, UsageError, usage_error
from .placement import MAX_MEMORY_HELP

USER_COLOR, BOT_COLOR, INFO_COLOR, ERR_COLOR, RESET = "\033[1;32m", "\033[1;34m", "\033[2m", "\033[1;31m", "\033[0m"


def build_parser() -> argparse.ArgumentParser:
    from .variants import VARIANTS
    p = OneLineArgumentParser(prog="python -m playground.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"catalog key ({', '.join(CATALOG)}), local folder or Hugging Face id")
    p.add_argument("--variant", default="bf16", choices=list(VARIANTS), help="how to load the weights")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default, auto: cuda if present)")
    p.add_argument("--max-memory", metavar="auto|0=70GiB,1=70GiB", help=MAX_MEMORY_HELP)
    p.add_argument("--prompt", help="one-shot mode: print the reply to this prompt and exit")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    p.add_argument("--no-stream", action="store_true", help="print replies only when complete")
    p.add_argument("--stats", action="store_true", help="one-shot mode: print the reply's stats to stderr")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow this model's own Python code to run (only for models you trust)")
    p.add_argument("--no-color", action="store_true")
    return p


def _params(args):
    from .engine import GenerationParams
    return GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                            greedy=args.greedy)


def _load(args):
    from .manager import ModelManager
    from .progress import console_progress
    from .placement import manager_device
    device, caps = manager_device(args.device, args.max_memory)
    manager = ModelManager(device=device, max_memory=caps)
    bar = console_progress()
    try:
        return manager.get(args.model, args.variant, trust_remote_code=args.trust_remote_code, progress=bar)
    finally:
        bar.close()


def one_shot(args) -> int:
    from .engine import chat
    params = _params(args)            # validate before the (slow) load
    if not args.prompt.strip():
        raise UsageError("--prompt is empty")
    lm = _load(args)
    text, stats = chat(lm, [{"role": "user", "content": args.prompt}], args.system, params)
    print(text)
    if args.stats:
        print(stats.badge(), file=sys.stderr)
    return 0


def interactive(args) -> int:
    from .engine import stream_reply

    def color(c):
        return "" if args.no_color or not sys.stdout.isatty() else c

    params = _params(args)
    lm = _load(args)
    streaming = not args.no_stream
    history: list[dict] = []
    mode = "chat" if lm.has_chat_template else "completion (no chat template: the model continues your text)"
    print(f"{color(INFO_COLOR)}{lm.label} on {lm.device} · {mode}\n"
          f"commands: clear · stream · exit · Ctrl+C stops a reply{color(RESET)}")
    while True:
        try:
            user = input(f"{color(USER_COLOR)}User:{color(RESET)} ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = user.strip().lower()
        if cmd in ("exit", "quit"):
            return 0
        if cmd == "clear":
            history.clear()
            os.system("clear" if sys.stdout.isatty() else "true")
            print(f"{color(INFO_COLOR)}new conversation{color(RESET)}")
            continue
        if cmd == "stream":
            streaming = not streaming
            print(f"{color(INFO_COLOR)}streaming {'on' if streaming else 'off'}{color(RESET)}")
            continue
        if not cmd:
            continue
        history.append({"role": "user", "content": user})
        print(f"{color(BOT_COLOR)}Assistant:{color(RESET)} ", end="", flush=True)
        gen = stream_reply(lm, history, args.system, params)
        text, stats = "", None
        try:
            for event in gen:
                text = event.text
                if streaming and event.delta:
                    print(event.delta, end="", flush=True)
                if event.done:
                    stats = event.stats
        except KeyboardInterrupt:
            gen.close()
            print(f"\n{color(INFO_COLOR)}[stopped]{color(RESET)}", end="")
        except PlaygroundError as exc:
            history.pop()
            print(f"\n{color(ERR_COLOR)}error: {exc}{color(RESET)}")
            continue
        if not streaming:
            print(text, end="")
        print()
        if stats is not None:
            print(f"{color(INFO_COLOR)}[{stats.badge()}]{color(RESET)}")
        history.append({"role": "assistant", "content": text})


def main(argv: list[str] | None = None) -> int:
    from . import process_setup
    process_setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return one_shot(args) if args.prompt is not None else interactive(args)
    except PlaygroundError as exc:
        return usage_error(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
