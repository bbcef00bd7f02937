"""The terminal chat, one-shot and interactive (driven through a pseudo-terminal)."""
from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest

from conftest import ROOT

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
CLI = [sys.executable, "-m", "playground.cli"]


def run_cli(*args, timeout=300):
    return subprocess.run(CLI + list(args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_one_shot_prints_the_reply_and_exits_0():
    r = run_cli("--model", "smollm2-135m-instruct", "--variant", "nf4", "--prompt", "What is the capital of France?",
                "--greedy", "--max-new-tokens", "16", "--stats")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr and "nf4" in r.stderr
    assert "Traceback" not in r.stderr


def test_one_shot_system_prompt_and_temperature(smollm_bf16):
    """--system and --temperature (with --seed) reach the model: the CLI's reply is exactly the engine's reply for
    that system prompt, temperature and seed (seeded sampling is reproducible), and each of them changes the reply:
    the same request without the system prompt, greedy, or at another temperature gives another reply (so a CLI that
    dropped either option could not match). Seen on CPU: French system prompt at 0.5 → "La Firma - Açaiba …",
    no system prompt → "One fruit is not a specific fruit …", greedy → "La ferre, or the …", 1.5 → "Bienvenue! …"."""
    from playground.cli import build_parser
    from playground.engine import GenerationParams, chat
    system, prompt = "You always answer in French.", "Name one fruit."
    r = run_cli("--prompt", prompt, "--system", system, "--temperature", "0.5", "--seed", "7",
                "--max-new-tokens", "8", "--device", "cpu")          # on the device of the reference below
    assert r.returncode == 0, r.stderr[-2000:]
    reply = r.stdout.strip()
    assert reply

    defaults = build_parser().parse_args([])          # the CLI's other sampling settings (top-p, top-k)
    msgs = [{"role": "user", "content": prompt}]

    def engine(system_prompt, **kw):
        params = dict(max_new_tokens=8, temperature=0.5, seed=7, top_p=defaults.top_p, top_k=defaults.top_k,
                      repetition_penalty=defaults.repetition_penalty)
        return chat(smollm_bf16, msgs, system_prompt, GenerationParams(**{**params, **kw}))[0].strip()
    assert reply == engine(system), (reply, engine(system))
    others = {"no system prompt": engine(None), "greedy": engine(system, greedy=True),
              "temperature 1.5": engine(system, temperature=1.5)}
    for what, text in others.items():
        assert text and text != reply, (what, text, reply)


@pytest.mark.parametrize("args,reason", [
    (["--variant", "int3", "--prompt", "hi"], "invalid choice: 'int3'"),
    (["--temperature", "-1", "--prompt", "hi"], "temperature must be in [0, 5]"),
    (["--max-new-tokens", "0", "--prompt", "hi"], "max_new_tokens must be"),
    (["--prompt", "   "], "--prompt is empty"),
    (["--model", "no-org/no-such-model", "--prompt", "hi"], "not in the local Hugging Face cache"),
    (["--max-new-tokens", "many"], "invalid int value"),
])
def test_bad_arguments_exit_nonzero_with_one_line(args, reason):
    r = run_cli(*args)
    assert r.returncode != 0
    assert reason in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, r.stderr


def test_interactive_session_in_a_terminal():
    # 256 new tokens: the long story must still be streaming when Ctrl+C arrives (with 40, a quiet machine finished
    # it, at 17 tok/s, before the interrupt and the test waited for a "[stopped]" that never came)
    child = pexpect.spawn(CLI[0], CLI[1:] + ["--greedy", "--max-new-tokens", "256"], cwd=str(ROOT), env=ENV,
                          encoding="utf-8", timeout=240, dimensions=(40, 200))
    try:
        child.expect("commands: clear")
        child.expect("User:")
        child.sendline("What is the capital of France?")
        child.expect("Assistant:")
        child.expect("Paris")
        child.expect(r"tok/s")
        child.expect("User:")
        child.sendline("stream")
        child.expect("streaming off")
        child.expect("User:")
        child.sendline("stream")
        child.expect("streaming on")
        child.expect("User:")
        child.sendline("clear")
        child.expect("new conversation")
        child.expect("User:")
        # Ctrl+C stops a long reply, not the program
        child.sendline("Write a very long story about a dragon who learns to cook.")
        child.expect("Assistant:")
        child.expect(r"\w+ \w+")        # some streamed words arrive
        child.sendintr()
        child.expect(r"\[stopped\]")
        child.expect("User:")
        child.sendline("What is the capital of France?")
        child.expect("Paris")
        child.expect("User:")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
