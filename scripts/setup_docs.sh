#!/usr/bin/env bash
# Set up what the documentation site needs (mkdocs.yml; tests/test_docs_site.py): the `docs` extra
# (mkdocs, mkdocstrings, the material theme) in .venv, and Debian's chromium for the screenshot
# checks, installed with apt (as root, or with sudo) only when /usr/bin/chromium is missing.
# Run after scripts/setup.sh; safe to run again. SKIP_CHROMIUM=1 leaves the browser out.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[docs]"
if [ "${SKIP_CHROMIUM:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A failed install is not fatal: the screenshot tests then skip and say why.
  if ! { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }; then
    echo "setup_docs.sh: could not install chromium with apt; the docs screenshot tests will skip" >&2
  fi
fi
