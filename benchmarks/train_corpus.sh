#!/usr/bin/env bash
# Train one corpus for the benchmark table (issue 4): both stages, then the
# per-layer temperatures for the stage-2 and the stage-1 model. Records each
# step's wall time in project/metrics/<dataset>/training_time.json.
#
#   bash benchmarks/train_corpus.sh <dataset> <stage1_steps> <stage2_steps> [threads]
#
# Model binaries stay in project/training/ (not in git).
set -euo pipefail
dataset=$1; s1=$2; s2=$3; threads=${4:-2}
cd "$(dirname "$0")/../project"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
# Evaluate at least once inside stage 2, so model-best can be a stage-2 model.
every=$(( s2 < 500 ? s2 : 500 ))
vars=(--vars.dataset "$dataset" --vars.stage1_steps "$s1" --vars.stage2_steps "$s2" --vars.eval_frequency "$every")
mkdir -p "metrics/$dataset"
out="metrics/$dataset/training_time.json"
echo "{\"dataset\": \"$dataset\", \"threads\": $threads, \"machine\": \"$(nproc --all) CPU cores, $(uname -m)\", \"steps\": {\"stage1\": $s1, \"stage2\": $s2}, \"batch_size\": 16, \"seconds\": {" > "$out.tmp"
sep=""
for cmd in convert train-stage1 train-stage2 calibrate calibrate-stage1; do
  start=$SECONDS
  python -m spacy project run "$cmd" . "${vars[@]}" --force
  printf '%s"%s": %d' "$sep" "$cmd" $((SECONDS - start)) >> "$out.tmp"
  sep=", "
done
printf '}, "command": "bash benchmarks/train_corpus.sh %s %s %s %s"}\n' "$dataset" "$s1" "$s2" "$threads" >> "$out.tmp"
python -m json.tool "$out.tmp" > "$out" && rm "$out.tmp"
cat "$out"
