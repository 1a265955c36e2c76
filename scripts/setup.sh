#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment .venv: torch, then problayers with its
# VAE-toolkit and test extras, editable. Safe to run again; takes seconds once done.
#   TORCH_SPEC   what to install when .venv has no torch (default torch==2.13.0; e.g. a CUDA
#                build's spec on a GPU machine)
#   PYTHON       the interpreter that creates .venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[vae,test]"
