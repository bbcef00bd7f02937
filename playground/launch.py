"""Start the web UI of the LLM quantization playground (``python launch.py``, or the ``playground`` command).

    python launch.py                                   # http://127.0.0.1:7860, smollm2-135m-instruct bf16 preloaded
    python launch.py --model gemma3-270m --variant int8 --model smollm2-135m-instruct
    python launch.py --host 0.0.0.0 --auth alice:secret           # reachable from the network, with a login
    python launch.py --share --auth-file users.txt                 # public *.gradio.live link, with a login
    python launch.py --endpoint http://127.0.0.1:8000/v1,model=NAME,key_env=MY_KEY   # a vLLM/TGI/... server too
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from playground import process_setup
from playground.placement import MAX_MEMORY_HELP

SHARE_TIMEOUT_S = 60.0
AUTH_HINT = ("--share makes the app reachable by anyone who gets the link, and it can run models on this "
             "machine. Add a login with --auth USER:PASS (repeatable) or --auth-file FILE (one user:pass per "
             "line), or pass --share-without-auth if you really want it open.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from playground.catalog import CATALOG, DEFAULT_MODEL
    from playground.variants import VARIANTS

    p = argparse.ArgumentParser(
        prog="launch.py", description="Web UI of the LLM quantization playground: Chat, Compare and Models tabs\n"
        "and a /chat API endpoint for gradio_client.", epilog="examples:\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument("--model", action="append", metavar="NAME",
                   help=f"model to preload and select by default; repeat to preload several. A catalog key "
                        f"({', '.join(CATALOG)}), a Hugging Face id or a local folder "
                        f"(default: {DEFAULT_MODEL})")
    g.add_argument("--variant", default="bf16", choices=list(VARIANTS),
                   help="variant to preload and select (default: %(default)s)")
    g.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                   help="where models run; auto: cuda when a GPU is available, else cpu (default: %(default)s)")
    g.add_argument("--max-memory", metavar="auto|0=70GiB,1=70GiB", help=MAX_MEMORY_HELP)
    g.add_argument("--memory-budget-gb", type=float, metavar="GB",
                   help="memory the loaded models may use; beyond it the least recently used model is unloaded "
                        "(default: 85%% of GPU memory, or half of the RAM on cpu)")
    g.add_argument("--trust-remote-code", action="append", default=[], metavar="MODEL",
                   help="allow MODEL to run the custom code in its repository (repeat per model; off for all "
                        "others)")
    g.add_argument("--no-preload", action="store_true", help="start without loading any model")
    e = p.add_argument_group("endpoints (OpenAI-compatible servers: vLLM, TGI, LMDeploy, llama.cpp, "
                             "transformers serve)")
    e.add_argument("--endpoint", action="append", default=[], metavar="URL[,model=NAME][,name=N][,key_env=VAR]",
                   help="add a served model, shown as endpoint:<name> in Chat and Compare (repeatable); the API "
                        "key is read from the environment variable key_env, never given on the command line")
    e.add_argument("--endpoints-file", type=Path, metavar="FILE",
                   help='JSON list of endpoints: [{"url": ..., "model": ..., "name": ..., "key_env": ...}]')
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface; default: %(default)s)")
    s.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    s.add_argument("--concurrency-limit", type=int, default=2, metavar="N",
                   help="replies generated at the same time; further requests wait in the queue "
                        "(default: %(default)s)")
    s.add_argument("--results-dir", type=Path, metavar="DIR",
                   help="where the Benchmark tab writes its runs (default: ~/.cache/quant-playground/results, or "
                        "$PLAYGROUND_RESULTS_DIR)")
    s.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests that may wait in the queue before new ones are turned away "
                        "(default: %(default)s)")
    a = p.add_argument_group("sharing and login")
    a.add_argument("--share", action="store_true",
                   help="also create a public *.gradio.live link (needs internet; requires --auth or "
                        "--auth-file unless --share-without-auth)")
    a.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                   help="require this login (repeatable)")
    a.add_argument("--auth-file", type=Path, metavar="FILE",
                   help="file of logins, one user:pass per line (blank lines and # comments ignored)")
    a.add_argument("--share-without-auth", action="store_true",
                   help="allow --share without a login (anyone with the link can use the app)")
    h = p.add_argument_group(
        "shared mode (on with --share, a login or a --host other than loopback: the users are strangers)")
    h.add_argument("--trust-users", action="store_true",
                   help="turn the shared-mode limits off: every user may load any folder or hub model, add any "
                        "endpoint and use any size of reply, as on your own machine")
    h.add_argument("--model-dir", action="append", default=[], type=Path, metavar="DIR",
                   help="offer every model folder in DIR (repeatable); shared mode loads only the catalog, "
                        "--model and these")
    h.add_argument("--allow-downloads", action="store_true",
                   help="shared mode: let users load any Hugging Face id (downloads it to this machine)")
    h.add_argument("--allow-user-endpoints", action="store_true",
                   help="shared mode: let users add their own endpoints (public internet addresses only)")
    h.add_argument("--reply-token-limit", type=int, default=1024, metavar="N",
                   help="shared mode: most new tokens one reply may ask for (default: %(default)s)")
    h.add_argument("--reply-time-limit", type=float, default=180.0, metavar="S",
                   help="shared mode: a reply is stopped after S seconds (default: %(default)s)")
    h.add_argument("--replies-per-user", type=int, default=1, metavar="N",
                   help="shared mode: replies one user may have generating at once (default: %(default)s)")
    h.add_argument("--queue-per-user", type=int, default=4, metavar="N",
                   help="shared mode: requests one user may have waiting or running (default: %(default)s)")
    args = p.parse_args(argv)
    args.auth_pairs = _auth_pairs(p, args)
    if args.concurrency_limit < 1:
        p.error("--concurrency-limit must be at least 1")
    if args.max_queue < 1:
        p.error("--max-queue must be at least 1")
    if args.memory_budget_gb is not None and args.memory_budget_gb <= 0:
        p.error("--memory-budget-gb must be positive")
    for flag in ("reply_token_limit", "replies_per_user", "queue_per_user"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not 0 < args.reply_time_limit <= 24 * 3600:
        p.error("--reply-time-limit must be in (0, 86400] seconds")
    for d in args.model_dir:
        if not d.expanduser().is_dir():
            p.error(f"--model-dir {d}: no such folder")
    if args.results_dir is not None:
        os.environ["PLAYGROUND_RESULTS_DIR"] = str(args.results_dir.expanduser().resolve())
    args.models = args.model or [DEFAULT_MODEL]
    args.endpoints = _endpoints(p, args)
    args.policy = sharing_policy(args)
    return args


def sharing_policy(args: argparse.Namespace):
    """The app's ``SharingPolicy`` from its flags (``playground/sharing.py``)."""
    from playground.sharing import SharingPolicy
    return SharingPolicy.for_launch(
        host=args.host, share=args.share, logins=bool(args.auth_pairs), trust_users=args.trust_users,
        allow_user_endpoints=args.allow_user_endpoints, allow_downloads=args.allow_downloads,
        host_models=args.models, model_dirs=args.model_dir, max_new_tokens=args.reply_token_limit,
        reply_deadline_s=args.reply_time_limit, replies_per_user=args.replies_per_user,
        queued_per_user=args.queue_per_user)


def _endpoints(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    from playground.endpoints import load_endpoints_file, parse_endpoint_spec
    from playground.errors import InvalidParameterError

    eps = []
    try:
        if args.endpoints_file is not None:
            eps += load_endpoints_file(args.endpoints_file)
        for spec in args.endpoint:
            eps.append(parse_endpoint_spec(spec))
    except InvalidParameterError as exc:
        parser.error(str(exc))
    names = [ep.name for ep in eps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        parser.error(f"two endpoints are named {', '.join(dupes)}: add name=... to tell them apart")
    return eps


def _auth_pairs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    entries = [(f"--auth {a.split(':', 1)[0]}:…", a) for a in args.auth]
    if args.auth_file is not None:
        try:
            text = args.auth_file.read_text(encoding="utf-8")
        except OSError as exc:
            parser.error(f"--auth-file {args.auth_file}: {exc.strerror or exc}")
        from_file = [(f"{args.auth_file} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                     if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            parser.error(f"--auth-file {args.auth_file} has no user:pass lines")
        entries += from_file
    pairs = []
    for where, entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            parser.error(f"{where}: expected USER:PASS (both non-empty)")
        pairs.append((user.strip(), password))
    return pairs


def start_share_link(app, timeout_s: float = SHARE_TIMEOUT_S) -> threading.Thread:
    """Try to open a share tunnel in the background; the local server keeps serving whatever happens.

    Gradio's own ``launch(share=True)`` waits for the tunnel inside ``launch`` (up to a minute or more
    when the network drops packets); here the attempt runs on a thread and is given up after ``timeout_s``.
    """
    from gradio import networking

    local = app.local_url
    result: dict = {}

    def attempt():
        try:
            url = networking.setup_tunnel(local_host=app.server_name, local_port=app.server_port,
                                          share_token=app.share_token,
                                          share_server_address=app.share_server_address,
                                          share_server_tls_certificate=app.share_server_tls_certificate)
            result["url"] = url.replace("http://", f"{app.share_server_protocol}://", 1)
        except Exception as exc:  # noqa: BLE001 - any failure means: no link, keep serving locally
            cause = exc.__cause__ or exc
            text = str(exc).rstrip(".")
            result["error"] = f"{text} ({type(cause).__name__}: {cause})" if cause is not exc else text

    def watch():
        worker = threading.Thread(target=attempt, name="share-tunnel", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if "url" in result:
            app.share_url = result["url"]
            print(f"* Public share link: {result['url']} (login required)" if app.auth
                  else f"* Public share link: {result['url']} (NO login: anyone with the link can use it)",
                  flush=True)
            return
        why = result.get("error") or f"no answer within {timeout_s:.0f} s"
        print(f"\n! Could not create the public share link: {why}.\n"
              f"  The app is still running locally at {local} (use --host 0.0.0.0 to reach it from your "
              f"network, or an SSH tunnel). Share links need outbound internet access to api.gradio.app "
              f"and its tunnel servers.", file=sys.stderr, flush=True)

    print(f"* Creating a public share link (giving up after {timeout_s:.0f} s) …", flush=True)
    t = threading.Thread(target=watch, name="share-watch", daemon=True)
    t.start()
    return t


def preload(manager, models: list[str], variant: str, trusted: set[str]) -> None:
    from playground.errors import PlaygroundError
    from playground.progress import console_progress

    for name in models:
        try:
            lm = manager.get(name, variant, trust_remote_code=name in trusted, progress=console_progress())
            print(f"* Preloaded {lm.label} on {lm.device}: {lm.stats.weights_bytes / 1024 ** 3:.2f} GB, "
                  f"load {lm.stats.load_s:.1f} s", flush=True)
        except PlaygroundError as exc:
            print(f"! Could not preload {name} [{variant}]: {exc}\n  The app starts anyway; pick another model "
                  f"or variant in the UI.", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    process_setup()
    args = parse_args(argv)
    if args.share and not args.auth_pairs and not args.share_without_auth:
        from playground.errors import usage_error
        return usage_error(f"refusing to --share without a login.\n{AUTH_HINT}", "launch.py", label="")

    from playground.manager import ModelManager
    from playground.ui import build_app, launch_app

    from playground.errors import PlaygroundError
    from playground.placement import manager_device
    try:
        device, caps = manager_device(args.device, args.max_memory)
    except PlaygroundError as exc:
        from playground.errors import usage_error
        return usage_error(str(exc), "launch.py")
    budget = int(args.memory_budget_gb * 1024 ** 3) if args.memory_budget_gb else None
    manager = ModelManager(budget_bytes=budget, device=device, max_memory=caps)
    trusted = set(args.trust_remote_code)
    if not args.no_preload:
        preload(manager, args.models, args.variant, trusted)
    app = build_app(manager, default_model=args.models[0], default_variant=args.variant, trusted_models=trusted,
                    endpoints=args.endpoints, policy=args.policy)
    for ep in args.endpoints:
        print(f"* Endpoint {ep}", flush=True)
    for line in args.policy.banner():
        print(line, flush=True)
    launch_app(app, host=args.host, port=args.port, auth=args.auth_pairs, concurrency_limit=args.concurrency_limit,
               max_queue=args.max_queue, prevent_thread_lock=True, quiet=True, policy=args.policy)
    print(f"* Running on local URL: {app.local_url}", flush=True)
    if args.auth_pairs:
        print(f"* Login required ({len(args.auth_pairs)} user(s))", flush=True)
    if args.share:
        start_share_link(app)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        manager.unload_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
