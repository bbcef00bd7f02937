"""The engine under the way Gradio drives it: a streaming reply is a generator whose next() calls Gradio runs on
whichever worker thread is free, so one reply's steps hop between threads. Torch's grad mode is thread-local:
a reply must give the same answer however its steps are spread over threads, and leave no thread in a changed
grad mode."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from conftest import DEFAULT_MODEL, FRANCE

from playground.engine import GenerationParams, stream_reply


def test_a_reply_whose_steps_hop_between_threads(smollm_bf16):
    params = GenerationParams(max_new_tokens=12, greedy=True)
    alone = [e.text for e in stream_reply(smollm_bf16, FRANCE, None, params)]
    gen = stream_reply(smollm_bf16, FRANCE, None, params)
    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]      # two distinct worker threads, taking turns
    texts, i = [], 0
    try:
        while True:
            try:
                texts.append(pools[i % 2].submit(next, gen).result().text)
            except StopIteration:
                break
            i += 1
        modes = [p.submit(lambda: (torch.is_grad_enabled(), torch.is_inference_mode_enabled())).result()
                 for p in pools]
    finally:
        for p in pools:
            p.shutdown()
    assert texts == alone and "Paris" in texts[-1]
    assert modes == [(True, False), (True, False)], "a worker thread was left in no-grad/inference mode"
    assert DEFAULT_MODEL == smollm_bf16.name and threading.current_thread() is threading.main_thread()
