"""A model over several devices (``--max-memory``, issue 16), on the CPU: the caps as users write them, the plan
transformers makes from them for the real Qwen2-72B shape on two H200-sized GPUs (worked out on the meta device,
so no GPU is needed), the refusal of a plan that needs the disk, and a real placed load with a reply.
What CUDA does with it is held in tests/gpu/test_gpu_placement.py."""
from __future__ import annotations

import gc
import weakref

import pytest

from conftest import DEFAULT_MODEL, FRANCE
from playground.errors import InvalidParameterError, MemoryBudgetError, UsageError
from playground.placement import (check_gpus_exist, check_plan, manager_device, parse_max_memory, parse_size,
                                  plan_placement, spread_option)

GIB = 2 ** 30


def test_caps_are_read_as_users_write_them():
    assert parse_max_memory("0=70GiB, 1=70.5GiB ,cpu=100GB") == {0: 70 * GIB, 1: int(70.5 * GIB), "cpu": 10 ** 11}
    assert parse_max_memory("cuda:1=512MiB") == {1: 512 * 2 ** 20}
    assert parse_max_memory({0: "1GiB", "cpu": 5}) == {0: GIB, "cpu": 5}
    assert parse_max_memory("") is None and parse_max_memory(None) is None
    assert parse_size("1024") == 1024 and parse_size("2 kib") == 2048
    assert spread_option(None) == (False, None) and spread_option("auto") == (True, None)
    assert spread_option("0=1GiB") == (True, {0: GIB})
    for bad, says in [("0=70", None), ("0:70GiB", "is not DEVICE=SIZE"), ("gpu0=1GiB", "unknown device 'gpu0'"),
                      ("0=lots", "'lots' is not a size"), ("0=1GiB,0=2GiB", "'0' is given twice"),
                      ("0=0GiB", "must be more than 0"), ("disk=1TB", "needs at least one GPU"),
                      ("0=5furlongs", "is not a size")]:
        if says is None:           # a bare number is bytes: 70 bytes is a cap, if a silly one
            assert parse_max_memory(bad) == {0: 70}
            continue
        with pytest.raises(InvalidParameterError, match=says):
            parse_max_memory(bad)


def test_the_command_lines_spread_only_when_asked():
    assert manager_device(None, None) == (None, None) and manager_device("auto", None) == (None, None)
    assert manager_device("cpu", None) == ("cpu", None)
    assert manager_device("auto", "auto") == ("auto", None)
    assert manager_device("cuda", "0=10GiB,1=10GiB") == ("auto", {0: 10 * GIB, 1: 10 * GIB})
    with pytest.raises(UsageError, match="--device cpu contradicts it"):
        manager_device("cpu", "0=10GiB")
    check_gpus_exist({0: 1, 1: 1, "cpu": 1}, 2)
    with pytest.raises(InvalidParameterError, match="names GPU 2 but this machine has GPUs 0-1"):
        check_gpus_exist({0: 1, 2: 1}, 2)
    with pytest.raises(InvalidParameterError, match="names GPU 0 but this machine has no GPU"):
        check_gpus_exist({0: 1}, 0)


@pytest.fixture(scope="module")
def qwen72b_config():
    from transformers import AutoConfig
    from benchmarks.random_weights import estimated_params, load_architecture
    arch = load_architecture("qwen2-72b")
    return AutoConfig.for_model(**arch["config"]), estimated_params(arch["config"])


def test_qwen2_72b_in_bf16_is_split_over_two_h200s_with_nothing_offloaded(qwen72b_config):
    config, params = qwen72b_config
    plan = plan_placement(config, parse_max_memory("0=130GiB,1=130GiB"))
    assert set(plan.bytes_by_device) == {"cuda:0", "cuda:1"}, plan.summary()
    assert abs(plan.total_bytes - 2 * params) / (2 * params) < 0.02           # 145 GB of bf16
    for dev in ("cuda:0", "cuda:1"):                                         # balanced, not "fill GPU 0 first"
        assert 0.4 < plan.bytes_by_device[dev] / plan.total_bytes < 0.6, plan.summary()
    assert sum(plan.layers_by_device.values()) == config.num_hidden_layers == 80
    assert check_plan(plan, "qwen2-72b [bf16]") == []
    assert plan.summary().startswith("cuda:0 ") and " GB (" in plan.summary() and "layers) + cuda:1 " in plan.summary()


def test_a_plan_that_needs_the_disk_is_refused_and_cpu_offload_is_said(qwen72b_config):
    config, _ = qwen72b_config
    tight = plan_placement(config, parse_max_memory("0=60GiB,1=60GiB"))
    assert tight.layers_by_device.get("disk", 0) > 0
    with pytest.raises(MemoryBudgetError) as exc:
        check_plan(tight, "qwen2-72b [bf16]")
    text = str(exc.value)
    assert text.startswith("qwen2-72b [bf16] needs about 135.4 GB; the devices and caps offered hold"), text
    assert "layers would be read from the disk for every token" in text and "Raise --max-memory" in text
    with_cpu = plan_placement(config, parse_max_memory("0=60GiB,1=60GiB,cpu=100GiB"))
    assert "disk" not in with_cpu.bytes_by_device
    (note,) = check_plan(with_cpu, "qwen2-72b [bf16]")
    n_cpu = with_cpu.layers_by_device["cpu"]
    assert note.startswith(f"{n_cpu} layers (") and "wait in CPU memory and are copied to the GPU for every token, " \
        "so replies will be much slower" in note


def test_a_placed_load_on_this_machine_answers_and_gives_its_memory_back():
    """device_map="auto" for real (here the only device is the CPU): the weights are where the plan said, the
    status line names them, a reply works, an unload frees the model."""
    from playground.engine import GenerationParams, chat
    from playground.manager import ModelManager
    from playground.ui.common import describe_loaded
    mm = ModelManager(device="auto", max_memory={"cpu": 4 * GIB})
    assert mm.budget_bytes == 4 * GIB                     # the caps are the budget
    lm = mm.get(DEFAULT_MODEL, "bf16")
    assert lm.stats.weights_by_device == {"cpu": lm.stats.weights_bytes} and lm.stats.weights_bytes > 2e8
    text, stats = chat(lm, FRANCE, None, GenerationParams(max_new_tokens=8, greedy=True))
    assert "Paris" in text and stats.new_tokens > 0
    assert "on auto" in describe_loaded(lm)
    ref = weakref.ref(lm.model)
    del lm
    mm.unload(DEFAULT_MODEL, "bf16", device="auto")
    gc.collect()
    assert ref() is None and mm.unreturned == []


def test_caps_too_small_for_the_model_are_refused_before_reading_and_the_next_load_works():
    from playground.manager import ModelManager
    mm = ModelManager(device="auto", max_memory={"cpu": 100 * 2 ** 20}, budget_bytes=8 * GIB)
    with pytest.raises(MemoryBudgetError, match=r"smollm2-135m-instruct \[bf16\] needs about 0\.\d+ GB; .* layers "
                                                 r"would be read from the disk"):
        mm.get(DEFAULT_MODEL, "bf16")
    assert mm.loaded() == []
    mm.max_memory = {"cpu": 4 * GIB}
    assert mm.get(DEFAULT_MODEL, "bf16").stats.weights_bytes > 0
    mm.unload_all()


def test_the_split_shows_in_the_status_line_and_the_rows():
    from playground.manager import GB, LoadedModel, LoadStats
    from playground.placement import split_text
    from playground.ui.common import describe_loaded
    by_dev = {"cuda:1": int(73.3 * GB), "cuda:0": int(72.1 * GB)}
    assert split_text(by_dev, {"cuda:0": 39, "cuda:1": 41}) == "cuda:0 72.1 GB (39 layers) + cuda:1 73.3 GB (41 layers)"
    stats = LoadStats(weights_bytes=sum(by_dev.values()), weights_by_device=by_dev)
    lm = LoadedModel(key=("q", "bf16"), name="q", variant="bf16", device="auto", model=None, tokenizer=None,
                     source=None, options=None, stats=stats)
    assert "weights 145.40 GB (cuda:0 72.1 GB + cuda:1 73.3 GB)" in describe_loaded(lm)


def test_the_command_lines_refuse_bad_caps_in_one_line(tmp_path, capsys):
    from benchmarks.__main__ import main as bench
    from playground.cli import main as cli
    assert bench(["run", "--model", DEFAULT_MODEL, "--max-memory", "0=lots", "--out", str(tmp_path / "a")]) == 2
    assert bench(["run", "--model", DEFAULT_MODEL, "--device", "cpu", "--max-memory", "0=1GiB",
                  "--out", str(tmp_path / "b")]) == 2
    assert cli(["--device", "cpu", "--max-memory", "0=1GiB", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "benchmarks: error: --max-memory 0: 'lots' is not a size; write it like 70GiB, 80GB or 512MiB"
    assert "device cpu contradicts it" in err[1]
    assert err[2] == 'error: --max-memory places models over GPUs (device_map="auto"); --device cpu contradicts it'


def test_a_benchmark_with_caps_measures_through_the_placed_model(tmp_path, monkeypatch):
    """As the two-GPU stage runs the Qwen2-72B shape in bf16: a skeleton (no decoder linears on disk) whose missing
    layers transformers initializes on the devices of the plan, measured through the placed model."""
    from benchmarks.__main__ import main
    from benchmarks.results import load_results
    from playground.variants import SKELETON_16BIT_NOTE
    monkeypatch.setenv("PLAYGROUND_SKELETON_ABOVE_GB", "0")     # tiny-llama stands in for a shape over 60 GB
    out = tmp_path / "placed"
    assert main(["run", "--model", "tiny-llama", "--random-weights", "--max-memory", "cpu=2GiB", "--prompt-tokens",
                 "16", "--new-tokens", "4", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    data = load_results(out)
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["decode_tok_s"] > 0 and row["decode_mode"] == "eager", row
    assert data["config"]["max_memory"] == "cpu=2GiB"
    # one device here: no split to show (on two GPUs: raw's weights_by_device_gb, peak_gpu_mem_by_device_gb)
    assert "weights_by_device_gb" not in row["raw"] and "peak_gpu_mem_by_device_gb" not in row["raw"]
    assert not any(n.startswith("weights placed over") for n in row["raw"]["notes"])
    assert SKELETON_16BIT_NOTE in row["raw"]["notes"], row["raw"]["notes"]


def test_a_16_bit_load_of_a_skeleton_initializes_the_missing_layers_with_the_inits_spread():
    import torch

    from benchmarks.random_weights import ensure_random_model
    from playground.manager import ModelManager
    from playground.random_checkpoints import decoder_linears
    path, _ = ensure_random_model("tiny-llama", "cpu", skeleton=True)
    mm = ModelManager(device="auto", max_memory={"cpu": 2 * GIB})
    lm = mm.get(path, "bf16")
    linears = decoder_linears(lm.model)
    assert linears and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.bfloat16
                           for m in linears.values())
    for name, m in linears.items():
        std = m.weight.float().std().item()
        assert torch.isfinite(m.weight).all() and 0.015 < std < 0.025, (name, std)
    logits = lm.model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all() and logits.float().std() > 0
    mm.unload_all()


def test_the_peak_of_each_gpu_is_kept_apart(monkeypatch):
    """A model over two GPUs: the tracker sums the allocator peaks (what the rows' peak_gpu_mem_gb always was) and
    keeps each GPU's (raw's peak_gpu_mem_by_device_gb). Driven through a fake two-GPU allocator: no GPU here."""
    import torch

    from benchmarks.trackers import MemoryTracker
    from playground.memory import PeakMemory
    peak = {0: 0, 1: 0}
    for name, fn in {"is_available": lambda: True, "init": lambda: None, "device_count": lambda: 2,
                     "max_memory_allocated": lambda i=0: peak[i], "max_memory_reserved": lambda i=0: peak[i],
                     "reset_peak_memory_stats": lambda i=0: peak.__setitem__(i, 0)}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    monkeypatch.setattr("benchmarks.trackers.Nvml.get", classmethod(lambda cls: None))
    with MemoryTracker("cuda") as mt:
        with PeakMemory("auto") as reply:
            peak[0], peak[1] = 3 * GIB, 5 * GIB
    assert reply.peak_by_device == {"cuda:0": 3 * GIB, "cuda:1": 5 * GIB} and reply.peak_bytes == 8 * GIB
    assert mt.result.peak_gpu_mem_gb == 8 and mt.result.gpu_mem_by_device == {"cuda:0": 3.0, "cuda:1": 5.0}
    with MemoryTracker("cuda") as one:
        peak[0] = GIB
    assert one.result.gpu_mem_by_device is None                 # one GPU used: nothing to split


def test_launch_with_caps_serves_a_placed_model_through_the_chat_api():
    """``launch.py --max-memory``: the preloaded model is placed with device_map (its reply's stats say device
    auto), and a bad cap ends the launch with one line before anything loads."""
    import subprocess
    import sys

    from gradio_client import Client

    from conftest import ROOT
    from reliability_support import server
    bad_size = "--max-memory cpu: 'lots' is not a size; write it like 70GiB, 80GB or 512MiB"
    contradiction = '--max-memory places models over GPUs (device_map="auto"); --device cpu contradicts it'
    for args, says in [(["--max-memory", "cpu=lots"], bad_size),
                       (["--device", "cpu", "--max-memory", "0=1GiB"], contradiction)]:
        proc = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == "launch.py: error: " + says, \
            proc.stderr
    with server("--max-memory", "cpu=4GiB") as srv:
        reply, stats = Client(srv.url, verbose=False).predict(
            model=DEFAULT_MODEL, variant="bf16", message="What is the capital of France?", max_new_tokens=8,
            greedy=True, api_name="/chat")
    assert "Paris" in reply and stats["device"] == "auto", stats


def test_weights_accelerate_offloads_count_where_the_device_map_put_them():
    """On a GPU machine accelerate keeps a "cpu" module's weights in CPU memory and a "disk" module's on the disk,
    the parameters themselves on the meta device, copied to the GPU for each forward. The split counts them as cpu
    and disk by the model's hf_device_map (here the hooks are attached as dispatch_model attaches them)."""
    import torch
    from accelerate.hooks import attach_align_device_hook_on_blocks
    from accelerate.utils import OffloadedWeightsLoader

    from playground.manager import weights_by_device
    from playground.placement import offloaded_to
    model = torch.nn.Sequential()
    model.add_module("embed", torch.nn.Embedding(64, 16))
    model.add_module("layers", torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(3)]))
    per_linear = (16 * 16 + 16) * 4
    device_map = {"embed": "cpu", "layers.0": "cpu", "layers.1": "cpu", "layers.2": "disk"}
    offload = {"embed": False, "layers.0": False, "layers.1": True, "layers.2": True}
    attach_align_device_hook_on_blocks(model, execution_device={k: "cpu" for k in device_map}, offload=offload,
                                       weights_map=OffloadedWeightsLoader(state_dict=model.state_dict()))
    model.hf_device_map = device_map
    assert model.layers[1].weight.device.type == "meta" and model.layers[0].weight.device.type == "cpu"
    split = weights_by_device(model)
    assert split == {"cpu": 64 * 16 * 4 + 2 * per_linear, "disk": per_linear}, split
    assert offloaded_to("layers.1.weight", device_map) == "cpu" and offloaded_to("x.weight", device_map) == "disk"
    assert offloaded_to("lm_head.weight", {"": "cpu"}) == "cpu"
