#!/usr/bin/env bash
# Train one corpus with a real budget (issue 11): stage 1 until dev stops
# improving, then stage 2 twice from the same stage 1 (the paper's loss, and
# self-distillation as the ablation), then per-layer temperatures for all three.
#
#   bash benchmarks/train_real_budget.sh <dataset> <stage1_steps> <stage2_steps> [threads] [first_step]
#
# threads: auto (default: the cores not busy when each step starts) or a count,
# which is also exported as OMP_NUM_THREADS/MKL_NUM_THREADS.
#
# Stage 1 evaluates every 500 updates and stops after 2,000 without a better
# full-depth dev score (model-best is the best full-depth checkpoint). Steps:
# convert, stage1, stage2, distill, calibrate; `first_step` resumes from one.
# Stage 2 is calibrated from model-last, not model-best: spaCy scores dev before
# the first update, and its dev score (TOKEE at the config's threshold) favours
# a model whose off-ramps are less confident, i.e. slower. On CoNLL and EWT that
# step-0 score won, so model-best was the untouched stage-1 model.
# STOP_AFTER=N ends stage 1 after update N's dev evaluation (train.py
# --stop-after: the schedule still runs over stage1_steps; N is a multiple of
# 500), which is how the runs below were "stopped by hand":
# CoNLL 6000 at 3000 (3500 in the first run), EWT 5000 at 2500, Weibo 2000 at 1500.
# TASK=ner,tagger trains one shared encoder with two heads (CoNLL-2003: NER and
# its PTB POS column) and TASK=tagger a tagger alone on the same corpus; NAME
# (default: the dataset, or <dataset>_<task> with TASK) names the corpus,
# training and metrics folders, so these runs sit beside the NER one.
# Each step's wall time goes to project/metrics/<name>/training_time.json.
# Model binaries stay in project/training/ (not in git).
set -euo pipefail
dataset=$1; s1=$2; s2=$3; threads=${4:-auto}; first=${5:-convert}
distill_weight=${DISTILL_WEIGHT:-1.0}
# SKIP_DISTILL=1 leaves out the self-distillation ablation (measured on CoNLL and EWT).
skip_distill=${SKIP_DISTILL:-0}
stop_after=${STOP_AFTER:-0}
task=${TASK:-}
name=${NAME:-$dataset${task:+_${task//,/_}}}
cd "$(dirname "$0")/../project"
if [[ $threads != auto ]]; then export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; fi
out="metrics/$name/training_time.json"
mkdir -p "metrics/$name" logs
every=500
common=(--eval-frequency "$every" --threads "$threads")
run_step() {
  local step_name=$1; shift
  local start=$SECONDS
  echo "[$name] $step_name: $*"
  "$@" > "logs/${name}_${step_name}.log" 2>&1
  python - "$out" "$step_name" $((SECONDS - start)) <<'EOF'
import json, sys
from pathlib import Path
path, name, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = json.loads(path.read_text()) if path.exists() else {}
data.setdefault("seconds", {})[name] = seconds
path.write_text(json.dumps(data, indent=2) + "\n")
EOF
}
steps=(convert stage1 stage2 distill calibrate)
started=false
for step in "${steps[@]}"; do
  [[ $step == "$first" ]] && started=true
  $started || continue
  case $step in
    convert) run_step convert python scripts/prepare.py "$dataset" "corpus/$name" --data-dir ../../shared/data ${task:+--task "$task"} ;;
    stage1) run_step stage1 python scripts/train.py "corpus/$name" "training/$name/stage1" --stage 1 \
        --max-steps "$s1" --stop-after "$stop_after" --patience 2000 --select-on full "${common[@]}" ;;
    stage2) run_step stage2 python scripts/train.py "corpus/$name" "training/$name/stage2" --stage 2 \
        --init-from "training/$name/stage1/model-best" --max-steps "$s2" "${common[@]}" ;;
    distill) [[ $skip_distill == 1 ]] && continue
      run_step distill python scripts/train.py "corpus/$name" "training/$name/stage2-distill" --stage 2 \
        --init-from "training/$name/stage1/model-best" --max-steps "$s2" --distill-weight "$distill_weight" "${common[@]}" ;;
    calibrate)
      run_step calibrate python -m spacy_early_exit calibrate "training/$name/stage2/model-last" "corpus/$name/dev.spacy" \
        --output "training/$name/final" --metrics "metrics/$name/calibration.json"
      run_step calibrate-stage1 python -m spacy_early_exit calibrate "training/$name/stage1/model-best" "corpus/$name/dev.spacy" \
        --output "training/$name/stage1-final" --metrics "metrics/$name/stage1/calibration.json"
      [[ $skip_distill == 1 ]] && continue
      run_step calibrate-distill python -m spacy_early_exit calibrate "training/$name/stage2-distill/model-last" "corpus/$name/dev.spacy" \
        --output "training/$name/distill-final" --metrics "metrics/$name/distill/calibration.json" ;;
  esac
done
python - "$out" "$dataset" "$s1" "$s2" "$threads" "$distill_weight" "$stop_after" "$skip_distill" "$task" "$name" <<'EOF'
import json, os, platform, sys
from pathlib import Path
path, dataset, s1, s2, threads, weight = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
threads = threads if threads == "auto" else int(threads)
stop, skip, task, name = int(sys.argv[7]), sys.argv[8] == "1", sys.argv[9], sys.argv[10]
env = (f"STOP_AFTER={stop} " if stop else "") + ("SKIP_DISTILL=1 " if skip else "") + (f"TASK={task} " if task else "")
env += f"NAME={name} " if name != (dataset + ('_' + task.replace(',', '_') if task else '')) else ""
data = json.loads(Path(path).read_text())
data.update(dataset=dataset, name=name, task=task or None, threads=threads, machine=f"{os.cpu_count()} CPU cores, {platform.machine()}",
            steps={"stage1": s1, "stage2": s2}, batch_size=16, distill_weight=weight, patience=2000, eval_frequency=500,
            command=f"{env}bash benchmarks/train_real_budget.sh {dataset} {s1} {s2} {threads}")
if stop:
    data["stage1_updates_run"] = stop
Path(path).write_text(json.dumps(data, indent=2) + "\n")
print(json.dumps(data, indent=2))
EOF
