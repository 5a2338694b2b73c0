#!/usr/bin/env bash
# spaCy's parser on the shared early-exit encoder (benchmarks/parser_on_exits.py):
# UD English-EWT through spaCy's CoNLL-U converter, one tokee_transformer with a
# listening UPOS tokee_tagger (it decides the exits) and spaCy's parser reading
# the exit-layer features. Stage 1 with `spacy train` (every layer for the
# tagger's off-ramps, the last layer's states for the parser; dev at full
# depth), stage 2 (self-sampled exits: the parser now learns from the states
# tokens leave with), calibrated, tuned for 2x and 3x on dev by the tagger,
# then scored on test.
#
#   bash benchmarks/train_parser_on_exits.sh [stage1_steps] [stage2_steps] [eval_frequency] [threads] [tune_limit]
#   bash benchmarks/train_parser_on_exits.sh 3000 1000 500 1 500     # the defaults
#
# Pipelines in project/training/parser_on_exits/{stage1,stage2,final}; results
# in benchmarks/results/parser_on_exits.json, step times in
# benchmarks/results/parser_on_exits_training.json.
set -euo pipefail
s1=${1:-3000}; s2=${2:-1000}; every=${3:-500}; threads=${4:-1}; tune_limit=${5:-500}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/project"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
corpus=corpus/ud_en_ewt_parse; out=training/parser_on_exits; config=$out/train_config.cfg
script="$root/benchmarks/parser_on_exits.py"
mkdir -p "$out" logs
declare -A seconds
step() { local name=$1; shift; local start=$SECONDS; echo "[parser-on-exits] $name: $*"; "$@"; seconds[$name]=$((SECONDS - start)); }
[[ -f $corpus/test.spacy ]] || step convert python "$script" convert "$corpus"
step config python "$script" config "$config"
step stage1 python -m spacy train "$config" --output "$out/stage1" --gpu-id -1 \
  --paths.train "$corpus/train.spacy" --paths.dev "$corpus/dev.spacy" --components.tokee_transformer.exit_mode off \
  --training.max_steps "$s1" --training.eval_frequency "$every" --training.optimizer.learn_rate.warmup_steps $((s1 / 20))
step stage2 python "$script" stage2 "$out/stage1/model-last" "$corpus" "$out/stage2" \
  --max-steps "$s2" --eval-frequency "$every" --threads "$threads"
step calibrate python -m spacy_early_exit --threads "$threads" calibrate "$out/stage2/model-last" "$corpus/dev.spacy" \
  --output "$out/final" --metrics "$out/calibration.json"
step tune python -m spacy_early_exit --threads "$threads" tune "$out/final" "$corpus/dev.spacy" \
  --targets 2,3 --windows 0,1,2 --limit "$tune_limit" --output "$out/tune.json"
step score python "$script" score "$out/final" "$corpus/test.spacy" --tuned "$out/tune.json" --threads "$threads"
cp "$out/tune.json" "$root/benchmarks/results/parser_on_exits_tune.json"
python - "$root/benchmarks/results/parser_on_exits_training.json" "$s1" "$s2" "$every" "$threads" "$tune_limit" \
  "${seconds[stage1]}" "${seconds[stage2]}" "${seconds[calibrate]}" "${seconds[tune]}" "${seconds[score]}" <<'PY'
import json, sys
from pathlib import Path
path, s1, s2, every, threads, limit, *times = sys.argv[1:]
data = {"command": f"bash benchmarks/train_parser_on_exits.sh {s1} {s2} {every} {threads} {limit}",
        "seconds": dict(zip(("stage1", "stage2", "calibrate", "tune", "score"), map(int, times))),
        "steps": {"stage1": int(s1), "stage2": int(s2)}, "eval_frequency": int(every), "threads": int(threads),
        "tune_limit": int(limit), "batch_size": 16}
Path(path).write_text(json.dumps(data, indent=2) + "\n")
print(json.dumps(data, indent=2))
PY
