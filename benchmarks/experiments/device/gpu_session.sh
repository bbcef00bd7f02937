#!/usr/bin/env bash
# The GPU runs behind results/gpu-*: run on the lent GPU machine (a copy of this tree, wheels in .whl/, no .git).
#   bash benchmarks/experiments/device/gpu_session.sh STAGE OUT_DIR
# Each stage is one command of at most ~9 minutes. The machine has torch/transformers/accelerate; bitsandbytes,
# gptqmodel, optimum, ... travel as wheels (.whl/: ../shared/gpu-wheels.sh; the quantized KV cache of longctx also
# needs optimum-quanto==0.2.7, hqq==0.2.8.post1 and termcolor wheels in .whl/).
set -uo pipefail
stage=$1; out=$2
W=$(ls -d .whl .whlq 2>/dev/null | head -1)
if [ -n "$W" ] && [ ! -d /tmp/site ] && [ "${DEVICE:-cuda}" != cpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PLAYGROUND_CACHE=/tmp/pgc TQDM_MININTERVAL=30
export PLAYGROUND_GIT_COMMIT=${PLAYGROUND_GIT_COMMIT:-$(cat .gitcommit 2>/dev/null || echo unknown)}
# the card in the folder names (h100, h200): numbers of different cards are never compared
GPU=${GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o 'H[0-9]\+' | tr 'H' 'h')}
GPU=${GPU:-h200}
# run LIMIT ARGS...: the sweep gets LIMIT-30 s as its --time-budget-s, so a variant it cuts or never starts is an
# error row saying so (--resume measures it again) and the files are complete before the outer timeout would fire
run() { timeout "$1" python3 -m benchmarks run --device "${DEVICE:-cuda}" --repeats 3 --warmup 1 \
          --time-budget-s $(( $1 - 30 )) "${@:2}" 2>&1 | grep -v "it/s\]\|step/s\]" | tail -60; }
case $stage in
  fast-bf16)   # #4 overhead + #7 roofline: bf16 eager vs fast, each against its own bare generate
    run 560 --model random:mistral-7b --variants bf16 --decode-modes eager,fast --batch-sizes 1 \
        --prompt-tokens 512 --new-tokens 256 --out "$out/mistral7b-bf16-eager-fast" ;;
  fast-4bit)   # #5/#7: gptq/awq (tinygemm) vs bf16, eager and fast, same run
    run 560 --model random:mistral-7b --variants bf16,gptq,awq --decode-modes eager,fast --batch-sizes 1 \
        --prompt-tokens 512 --new-tokens 256 --no-overhead-check --out "$out/mistral7b-4bit-eager-fast" ;;
  awq-bs16)    # AWQ after the bf16 fix, and batch 16 through the fast path
    run 250 --model random:mistral-7b --variants bf16,awq --decode-modes eager,fast --batch-sizes 1 \
        --prompt-tokens 512 --new-tokens 256 --no-overhead-check --out "$out/mistral7b-awq-eager-fast"
    run 250 --model random:mistral-7b --variants bf16,gptq,awq --decode-modes fast --batch-sizes 16 \
        --prompt-tokens 512 --new-tokens 256 --no-overhead-check --out "$out/mistral7b-bs16-fast" ;;
  shape-*)     # #5: the classic guides' shapes, "variant | RAM | VRAM | load | short | long" at batch 1 (needs .whl
               # with bitsandbytes: carry a bitsandbytes wheel holding only the cu130 library to stay under 64 MiB)
    arch=${stage#shape-}
    run 580 --model "random:$arch" --variants bf16,int8,nf4,gptq,awq --decode-modes eager --batch-sizes 1 \
        --prompt-tokens 512 --new-tokens 256 --no-overhead-check --out "$out/$arch-bs1" ;;
  table-*)     # #15: the classic guides' table ("variant | RAM | VRAM | load | short | long") for one shape, batch 1.
    # Into the tree's results/ with --resume (a second call continues a stopped one); the folder comes back in $out.
    # VARIANTS, MODES (eager,fast), BS (1 or 16), NEW (256), REPEATS (3), BENCH_LIMIT (s) override the defaults.
    arch=${stage#table-}
    dest=${RESULTS:-results}/gpu-$GPU-$arch-${WHAT:-bs${BS:-1}}
    run "${BENCH_LIMIT:-560}" --model "random:$arch" --variants "${VARIANTS:-fp16,nf4,gptq,awq,fp4,int8}" \
        --decode-modes "${MODES:-eager}" --batch-sizes "${BS:-1}" --prompt-tokens "${PROMPT:-512}" \
        --new-tokens "${NEW:-256}" --kv-cache "${KV:-default}" --repeats "${REPEATS:-3}" --no-overhead-check \
        --resume --out "$dest"
    cp -r "$dest" "$out/" ;;
  longctx)     # #15: where the KV cache dominates: Llama-2-7B-32K shape (full attention), 4k and 16k prompts,
    # bf16 and nf4 weights, KV default/int8/int4 (quantized KV decodes eagerly)
    WHAT=${WHAT:-longctx} VARIANTS=${VARIANTS:-bf16,nf4} PROMPT=${PROMPT:-4096,16384} NEW=${NEW:-64} \
      KV=${KV:-default,int8,int4} REPEATS=${REPEATS:-2} bash "$0" "table-${ARCH:-llama-2-7b-32k}" "$out" ;;
  qwen72b-4bit)  # #15: the Qwen2-72B shape in 4 bits on one H200. Its bf16 weights (145 GB) fit neither the GPU nor
    # the machine's RAM or disk: each 4-bit variant builds a skeleton (embeddings, norms, lm_head) and writes its codes
    # shard by shard (playground/random_checkpoints.py). One variant at a time, each checkpoint (~40 GB) deleted
    # before the next is written: two do not fit the 64 GB disk. VARIANT_LIMIT seconds each.
    vs=${VARIANTS:-gptq,nf4}
    for v in ${vs//,/ }; do
      WHAT=4bit VARIANTS=$v REPEATS=${REPEATS:-2} BENCH_LIMIT=${VARIANT_LIMIT:-280} bash "$0" "table-${ARCH:-qwen2-72b}" "$out"
      rm -rf "$PLAYGROUND_CACHE/quantized/${ARCH:-qwen2-72b}"-4bit-skeleton-*; df -h "$PLAYGROUND_CACHE" | tail -1
    done ;;
  quantize-memory)  # #15: peak RAM while calibrating real GPTQ/AWQ checkpoints of a 7B shape (the Baichuan guide's
    # "36.1 GB of RAM to quantize"), calibration on the GPU, the bf16 model in RAM; a method past its limit is a row
    dest=${RESULTS:-results}/gpu-$GPU-${ARCH:-mistral-7b}-quantize-memory
    timeout 580 python3 -m benchmarks.experiments.device.quantize_memory --model "random:${ARCH:-mistral-7b}" \
      --methods "${METHODS:-gptq,awq}" --device "${DEVICE:-cuda}" --samples "${SAMPLES:-32}" \
      --time-limit "${METHOD_LIMIT:-270}" --out "$dest/quantize_memory.json" 2>&1 | grep -v "it/s\]" | tail -30
    cp -r "$dest" "$out/" ;;
  decode-speed)  # #19: decode speed of a 7B shape against the roofline and transformers' own static-cache generate
    # (--peer), batch ${BS:-1}, prompt 512, 256 new tokens. Default: bf16 eager, fast (fused q/k/v + gate/up) and
    # fast-unfused (the A/B of the fusion); decode-speed-quantized runs int8-wo, gptq, awq (fast) into a folder of
    # its own. ARCH (mistral-7b, llama-2-7b), BS (1, 16), VARIANTS, MODES, NEW, REPEATS, BENCH_LIMIT (s) override;
    # KERNEL=triton-gemv with MODES=fast,fast-tinygemm: the A/B of the Triton GEMV for gptq/awq; PEER= (empty) leaves
    # the transformers-static row out (a second folder of the same variants, e.g. TUNE=on, has it in the first).
    # Into the tree's results/ (or RESULTS) with --resume (a call cut by the limit continues); copied to $out.
    arch=${ARCH:-mistral-7b}
    dest=${RESULTS:-results}/gpu-$GPU-$arch-decode-bs${BS:-1}-${WHAT:-bf16}
    run "${BENCH_LIMIT:-540}" --model "random:$arch" --variants "${VARIANTS:-bf16}" \
        --decode-modes "${MODES:-eager,fast,fast-unfused}" --peer "${PEER-transformers-static}" --batch-sizes "${BS:-1}" \
        --prompt-tokens "${PROMPT:-512}" --new-tokens "${NEW:-256}" --repeats "${REPEATS:-3}" --no-overhead-check \
        ${TUNE:+--tune-kernels $TUNE} ${KERNEL:+--kernel $KERNEL} --resume --out "$dest"
    cp -r "$dest" "$out/" ;;
  decode-speed-quantized)  # #19: the same for the fast int8 and 4-bit variants (their fast rows are unfused already),
    # one variant at a time with VARIANT_LIMIT seconds each into the same folder (--resume), so one slow compile
    # cannot take the others' time; TUNE=on|off: inductor's coordinate-descent tuning (--tune-kernels; default auto:
    # int8-wo's decoder only), folder *-tune-on / *-tune-off
    vs=${VARIANTS:-int8-wo,gptq,awq}
    for v in ${vs//,/ }; do
      WHAT=${WHAT:-quantized${TUNE:+-tune-$TUNE}} VARIANTS=$v MODES=${MODES:-fast} BENCH_LIMIT=${VARIANT_LIMIT:-180} \
        bash "$0" decode-speed "$out"
    done ;;
  gemv-probe)  # #19: the Triton int4 GEMV: teacher-forced logits of each decoder with it on/off, kernels in CUDA graphs
    dest=${RESULTS:-results}/gpu-$GPU-int4-gemv-probe
    timeout "${PROBE_LIMIT:-360}" python3 -m benchmarks.experiments.device.probe_gemv --device "${DEVICE:-cuda}" \
      --out "$dest" 2>&1 | grep -v "it/s\]\|Failed to load\|DEBUG    torch" | tail -30
    cp -r "$dest" "$out/" ;;
  decode-profile)  # #19: where the fastest bf16 step's time goes: torch.profiler over 128 compiled decode steps
    # (fused, then unfused), top kernels and categories per step, written as small json/txt (no trace)
    dest=${RESULTS:-results}/gpu-$GPU-${ARCH:-mistral-7b}-decode-profile
    for flag in "" --unfused; do
      timeout "${PROFILE_LIMIT:-260}" python3 -m benchmarks.experiments.device.profile_decode \
        --model "random:${ARCH:-mistral-7b}" --variant "${VARIANT:-bf16}" --device "${DEVICE:-cuda}" \
        --prompt-tokens "${PROMPT:-512}" --steps "${STEPS:-128}" $flag --out "$dest" 2>&1 \
        | grep -v "it/s\]\|USDT" | tail -45
    done
    cp -r "$dest" "$out/" ;;
  two-gpu-bf16)  # #16 (nvidia-h200-x2): the Qwen2-72B shape in bf16 over both GPUs (device_map="auto", --max-memory
    # CAPS, default auto: transformers' balanced caps), batch 1 and 16, prompt 512, 256 new tokens, eager (the fast
    # decoder is for one GPU). The 145 GB fit neither disk: the 5 GB skeleton is read and transformers initializes
    # the decoder's linears on the GPUs the plan gives them. Memory per GPU: the rows' raw peak_gpu_mem_by_device_gb
    # and weights_by_device_gb. Into results/gpu-2xh200-ARCH/bf16-two-gpus with --resume.
    arch=${ARCH:-qwen2-72b}; dest=${RESULTS:-results}/gpu-2xh200-$arch/bf16-two-gpus
    run "${BENCH_LIMIT:-540}" --model "random:$arch" --variants "${VARIANTS:-bf16}" --max-memory "${CAPS:-auto}" \
        --decode-modes eager --batch-sizes "${BS:-1,16}" --prompt-tokens "${PROMPT:-512}" --new-tokens "${NEW:-256}" \
        --repeats "${REPEATS:-2}" --no-overhead-check --resume --out "$dest"
    cp -r "$dest" "$out/" ;;
  two-gpu-4bit)  # #16: the same shape in 4 bits on one of the two GPUs, same session, for the ratio (qwen72b-4bit's
    # writers; one variant at a time, each ~40 GB checkpoint deleted before the next)
    vs=${VARIANTS:-nf4,gptq}; arch=${ARCH:-qwen2-72b}
    for v in ${vs//,/ }; do
      dest=${RESULTS:-results}/gpu-2xh200-$arch/$v-one-gpu
      CUDA_VISIBLE_DEVICES=0 run "${VARIANT_LIMIT:-270}" --model "random:$arch" --variants "$v" --decode-modes "${MODES:-auto}" \
        --batch-sizes "${BS:-1,16}" --prompt-tokens "${PROMPT:-512}" --new-tokens "${NEW:-256}" --repeats "${REPEATS:-2}" \
        --no-overhead-check --resume --out "$dest"
      cp -r "$dest" "$out/"
      rm -rf "$PLAYGROUND_CACHE/quantized/$arch"-4bit-skeleton-*
    done ;;
  placement-tests)  # #16: tests/gpu/test_gpu_placement.py (one GPU + CPU; two GPUs when there are two)
    K=${K:-placement} bash "$0" gpu-tests "$out" ;;
  gpu-tests)   # #13: the GPU test suite (tests/gpu, marker gpu), one command of at most ~9 minutes
    # SIGINT at the limit: pytest stops and still prints the failures so far
    # 4 worker processes share the GPU (each test measures its own process: allocator and NVML per pid); tests
    # are handed out one at a time in file order, slowest first; -rP prints each passed test's measurements
    timeout -s INT "${LIMIT:-540}" python3 -m pytest tests/gpu -v -n "${WORKERS:-4}" --maxschedchunk 1 -rP \
      -p no:cacheprovider -o addopts="" --tb=short --durations=20 ${K:+-k "$K"} 2>&1 \
      | grep -v "it/s\]\|step/s\]" | tee "$out/gpu-tests.log" | tail -80 ;;
  memory-return)   # #13: load/unload each variant 3 times, allocator and NVML (results/gpu-h200-memory-return)
    timeout 570 python3 -m benchmarks.experiments.reliability memory --device cuda --model "random:${ARCH:-glm-6b-class}" \
      --variants "${VARIANTS:-bf16,fp16,int8,nf4,fp4,gptq,awq}" --cycles "${CYCLES:-3}" --fast-decode "${FAST:-auto}" \
      --out "$out/memory-return" 2>&1 | grep -v "it/s\]\|step/s\]" | tail -40 ;;
  glm-bench)   # #13: the GLM-6B class, every variant, eager and fast, bs 1, prompt 512, 256 new tokens.
    # Written into the tree's results/ folder with --resume: a second call (that folder copied back into the tree
    # first) continues where a call stopped at its time limit; the folder comes back under $out.
    dest=results/gpu-$GPU-${ARCH:-glm-6b-class}-bs1
    run "${BENCH_LIMIT:-550}" --model "random:${ARCH:-glm-6b-class}" --variants "${VARIANTS:-bf16,fp16,nf4,gptq,awq,int8}" \
        --decode-modes eager,fast --batch-sizes 1 --prompt-tokens 512 --new-tokens 256 --no-overhead-check \
        --repeats "${REPEATS:-3}" --resume --out "$dest"
    cp -r "$dest" "$out/" ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
