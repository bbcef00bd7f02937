"""Load: 16 concurrent gradio_client chat sessions x 4 turns on the default model through a real ``launch.py``
server, 0 errors, every prompt counted from its own session's history only; and no leak: the server's resident
memory after 100 requests is within 5% of what it was after 20 (requests 1-20 come from 4 sessions at once, so
the first sample is taken after the server has already served overlapping chats on several threads). The committed
figures use 16 x 10 turns and 200 requests (below); the test's smaller load keeps CI on 2 cores in its time.

Set RELIABILITY_RESULTS=DIR to also write the figures into DIR/summary.json (the committed figures in
results/reliability-cpu/ come from ``python -m benchmarks.experiments.reliability all``, which runs the same code)."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks.experiments.reliability import load_test, write_section
from reliability_support import server

pytestmark = pytest.mark.slow
# What 5% allows on CPU, and why it still catches a leak: the bytes malloc has in use grow by ~10 kB a request
# under this load (measured with mallinfo2 inside the server: +1.6 MB over 160 requests), while RSS also carries
# what glibc keeps resident after frees, which grows towards a plateau as more worker threads, longer prompts
# and more sessions take turns (launch_app's malloc settings cut it from +49 to +25 MB at request 180). Before
# the oneDNN kernel caches were bounded, RSS grew ~0.6 MB a request (+15% over 180 requests, +7% over this
# test's 80) and this test failed; a leak of one prompt's KV cache per request would add ~5 MB a request. Since
# launch_app also runs a heap trimmer (malloc_trim every 2 s), the growth is ~0.4% (it was 4.3-5.9% without, which
# made this test flaky).
MAX_GROWTH = 0.05


def test_sixteen_concurrent_sessions_no_errors_no_leak():
    with server("--device", "cpu") as srv:
        fig = load_test(srv, sessions=16, turns=4, max_new_tokens=4, warm=20, total=100)
        assert srv.proc.poll() is None, srv.output[-3000:]
    print("\nload test:", json.dumps({k: v for k, v in fig.items() if k != "rss_samples_mb"}))
    if os.environ.get("RELIABILITY_RESULTS"):
        write_section(os.environ["RELIABILITY_RESULTS"], "load_test", fig)
    assert fig["requests"] == 100 and fig["concurrent_requests"] == 64
    assert fig["errors"] == 0, fig["error_samples"]
    assert fig["prompt_token_mismatches"] == [], "a session's prompt held another session's turns"
    assert fig["latency_s"]["p90"] >= fig["latency_s"]["p50"] > 0
    assert fig["queue_wait_s"]["p50"] is not None
    assert fig["rss_growth_fraction"] <= MAX_GROWTH, fig["rss_mb_after"]
