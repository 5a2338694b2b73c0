#!/usr/bin/env bash
# spaCy's parser on the shared early-exit encoder (benchmarks/parser_on_exits.py):
# UD English-EWT through spaCy's CoNLL-U converter, one tokee_transformer with a
# listening UPOS tokee_tagger (it decides the exits) and spaCy's parser reading
# the exit-layer features, trained jointly (stage 1 only) with `spacy train`,
# calibrated, tuned for 2x and 3x on dev by the tagger, then scored on test.
#
#   bash benchmarks/train_parser_on_exits.sh [max_steps] [eval_frequency] [threads] [tune_limit]
#   bash benchmarks/train_parser_on_exits.sh 3000 500 1 500     # the defaults
#
# Pipeline in project/training/parser_on_exits/, results in
# benchmarks/results/parser_on_exits.json, step times in
# benchmarks/results/parser_on_exits_training.json.
set -euo pipefail
max_steps=${1:-3000}; every=${2:-500}; threads=${3:-1}; tune_limit=${4:-500}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/project"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
corpus=corpus/ud_en_ewt_parse; out=training/parser_on_exits; config=$out/train_config.cfg
mkdir -p "$out" logs
declare -A seconds
step() { local name=$1; shift; local start=$SECONDS; echo "[parser-on-exits] $name: $*"; "$@"; seconds[$name]=$((SECONDS - start)); }
[[ -f $corpus/test.spacy ]] || step convert python "$root/benchmarks/parser_on_exits.py" convert "$corpus"
step config python "$root/benchmarks/parser_on_exits.py" config "$config"
step train python -m spacy train "$config" --output "$out" --gpu-id -1 \
  --paths.train "$corpus/train.spacy" --paths.dev "$corpus/dev.spacy" \
  --training.max_steps "$max_steps" --training.eval_frequency "$every" \
  --training.optimizer.learn_rate.warmup_steps $((max_steps / 20)) 2>&1 | tee logs/parser_on_exits_train.log
step calibrate python -m spacy_early_exit --threads "$threads" calibrate "$out/model-best" "$corpus/dev.spacy" \
  --output "$out/final" --metrics "$out/calibration.json"
step tune python -m spacy_early_exit --threads "$threads" tune "$out/final" "$corpus/dev.spacy" \
  --targets 2,3 --windows 0,1,2 --limit "$tune_limit" --output "$out/tune.json"
step score python "$root/benchmarks/parser_on_exits.py" score "$out/final" "$corpus/test.spacy" \
  --tuned "$out/tune.json" --threads "$threads"
cp "$out/tune.json" "$root/benchmarks/results/parser_on_exits_tune.json"
python - "$root/benchmarks/results/parser_on_exits_training.json" "$max_steps" "$every" "$threads" "$tune_limit" \
  "${seconds[train]}" "${seconds[calibrate]}" "${seconds[tune]}" "${seconds[score]}" <<'PY'
import json, sys
from pathlib import Path
path, steps, every, threads, limit, train, calibrate, tune, score = sys.argv[1:]
data = {"command": f"bash benchmarks/train_parser_on_exits.sh {steps} {every} {threads} {limit}",
        "seconds": {"train": int(train), "calibrate": int(calibrate), "tune": int(tune), "score": int(score)},
        "max_steps": int(steps), "eval_frequency": int(every), "threads": int(threads), "tune_limit": int(limit),
        "batch_size": 16, "stage": 1}
Path(path).write_text(json.dumps(data, indent=2) + "\n")
print(json.dumps(data, indent=2))
PY
