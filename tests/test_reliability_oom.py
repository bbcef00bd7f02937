"""Out of memory, for real: a cap on the writable memory (RLIMIT_DATA) of a running ``launch.py`` server, and an
address-space cap (RLIMIT_AS) on a benchmark worker. A request that needs more memory than is left gets a clear
message; the model and the app keep working for the next request; in a benchmark the combo that ran out becomes an
``oom`` row while the others are measured."""
from __future__ import annotations

import resource
import threading

import psutil
import pytest

from reliability_support import DEFAULT_MODEL, event_ids, queue_call, server

MB = 1024 ** 2
# Measured on this server (smollm2 bf16, CPU): a 3,000-token prompt needs about 120-140 MB more at its peak (KV cache
# + activations of the prefill), a short question under 10 MB. A cap of 48 MB above the current writable memory
# therefore fails the first and leaves room for the second. RLIMIT_DATA, not RLIMIT_AS: glibc's thread arenas
# reserve their 64 MB heaps as address space up front and grow inside them without new address space, so with an
# address-space cap the long prompt sometimes fitted in such a reservation and did not fail; RLIMIT_DATA charges
# the pages when they become writable (mprotect), wherever they are.
HEADROOM_MB = 48
LONG = "hello " * 3000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv():
    with server("--device", "cpu") as s:
        yield s


def chat(client, message: str, max_new_tokens: int = 8):
    from gradio_client.exceptions import AppError
    try:
        return client.predict(model=DEFAULT_MODEL, variant="bf16", message=message, max_new_tokens=max_new_tokens,
                              greedy=True, api_name="/chat"), None
    except AppError as exc:
        return None, str(exc)


def test_out_of_memory_in_chat_is_a_clear_message_and_the_app_keeps_working(srv):
    from gradio_client import Client
    client = Client(srv.url, verbose=False)
    # warm up: the worker threads and malloc arenas a few overlapping requests need exist before the cap
    threads = [threading.Thread(target=chat, args=(Client(srv.url, verbose=False), "Hi", 2)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ui = event_ids(srv.url)["send"]
    proc = psutil.Process(srv.pid)
    soft, hard = resource.prlimit(srv.pid, resource.RLIMIT_DATA)
    resource.prlimit(srv.pid, resource.RLIMIT_DATA, (proc.memory_info().data + HEADROOM_MB * MB, hard))
    try:
        # through the API
        _, error = chat(client, LONG)
        assert error and error.startswith(f"out of memory while generating with {DEFAULT_MODEL} [bf16]"), error
        assert "use fewer tokens, a smaller variant, or unload other models" in error
        result, error = chat(client, "What is the capital of France?")
        assert error is None, error                                        # same cap, same model, next request
        reply, stats = result
        assert "Paris" in reply
        # through the chat tab's own handler: the same message as an error toast, the conversation rolled back
        data = [DEFAULT_MODEL, "bf16", LONG, None, "", 8, 0.7, 0.9, 50, 1.0, -1, True, "default"]
        res = queue_call(srv.url, ui, data)
        assert res.success is False and res.detail.startswith("out of memory while generating"), res.detail
        data[2] = "What is the capital of France?"
        res = queue_call(srv.url, ui, data)
        assert res.success, res.detail
        assert "Paris" in str(res.output["data"][0])
    finally:
        resource.prlimit(srv.pid, resource.RLIMIT_DATA, (soft, hard))
    assert srv.proc.poll() is None


def test_out_of_memory_while_measuring_becomes_an_oom_row(tmp_path):
    """The model loads under the cap; batch 1 is measured, batch 48 × 256 tokens (≈ 0.3 GB of KV cache) runs out."""
    from benchmarks.config import RunConfig
    from benchmarks.results import load_results
    from benchmarks.runner import run_sweep
    cfg = RunConfig(models=[DEFAULT_MODEL], variants=["bf16"], batch_sizes=[1, 48], prompt_tokens=[256],
                    new_tokens=[2], repeats=1, warmup=0, device="cpu", memory_cap_gb=0.6, overhead_check=False,
                    out=str(tmp_path / "oom"))
    rows = run_sweep(cfg)
    assert [(r["batch_size"], r["status"]) for r in rows] == [(1, "ok"), (48, "oom")], \
        [(r["batch_size"], r["status"], r["error"]) for r in rows]
    assert rows[0]["decode_tok_s"] > 0 and rows[0]["weights_gb"] > 0
    assert "memory" in rows[1]["error"].lower()
    assert load_results(tmp_path / "oom")["summary"]["status_counts"]["oom"] == 1
