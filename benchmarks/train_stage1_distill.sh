#!/usr/bin/env bash
# The stage-1 self-distillation ablation (issue 11): the same stage-1 run as
# train_real_budget.sh (same learning-rate schedule, same updates) but with
# `--distill-weight`, then stage 2 with the paper's loss from its best
# checkpoint, then per-layer temperatures. The result sits beside the main
# pipeline as training/<dataset>/distill-stage1-final, which
# `benchmarks/run.py <dataset> --phase ablation --ablation distill-stage1` scores.
#
#   bash benchmarks/train_stage1_distill.sh <dataset> <stage1_steps> <stop_after> <stage2_steps> [threads]
#
# stage1_steps sets the schedule (warm-up and linear decay run over it, as in the
# main run); stop_after (a multiple of 500) ends stage 1 after that update's dev
# evaluation (train.py --stop-after), where the main run was stopped by hand
# (CoNLL: 6000 3000, EWT: 5000 2500), so both stage-1 models saw the same
# updates at the same learning rates.
# threads: auto (default: the cores not busy when each step starts) or a count,
# which is also exported as OMP_NUM_THREADS/MKL_NUM_THREADS.
# Wall times go to project/metrics/<dataset>/distill_stage1/training_time.json.
set -euo pipefail
dataset=$1; s1=$2; stop_after=$3; s2=$4; threads=${5:-auto}
weight=${DISTILL_WEIGHT:-1.0}; temperature=${DISTILL_TEMPERATURE:-2.0}
cd "$(dirname "$0")/../project"
export PYTHONUNBUFFERED=1
if [[ $threads != auto ]]; then export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; fi
metrics="metrics/$dataset/distill_stage1"; out="$metrics/training_time.json"
train_dir="training/$dataset/distill-stage1"
mkdir -p "$metrics" logs
record() {  # name seconds
  python - "$out" "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
path, name, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = json.loads(path.read_text()) if path.exists() else {}
data.setdefault("seconds", {})[name] = seconds
path.write_text(json.dumps(data, indent=2) + "\n")
EOF
}
if [[ ! -f corpus/$dataset/train.spacy ]]; then
  python scripts/prepare.py "$dataset" "corpus/$dataset" --data-dir ../../shared/data > "logs/${dataset}_convert.log" 2>&1
fi

echo "[$dataset] stage 1 with distill_weight=$weight, T=$temperature, stopping after update $stop_after"
start=$SECONDS
log="logs/${dataset}_distill_stage1.log"
python scripts/train.py "corpus/$dataset" "$train_dir/stage1" --stage 1 --max-steps "$s1" --stop-after "$stop_after" \
  --patience 2000 --select-on full --eval-frequency 500 --threads "$threads" \
  --distill-weight "$weight" --distill-temperature "$temperature" > "$log" 2>&1 \
  || { echo "stage 1 failed: see $log" >&2; exit 1; }
record stage1 $((SECONDS - start))

echo "[$dataset] stage 2 (the paper's loss) from the distilled stage 1"
start=$SECONDS
python scripts/train.py "corpus/$dataset" "$train_dir/stage2" --stage 2 --init-from "$train_dir/stage1/model-best" \
  --max-steps "$s2" --eval-frequency 500 --threads "$threads" > "logs/${dataset}_distill_stage1_stage2.log" 2>&1
record stage2 $((SECONDS - start))

start=$SECONDS
python -m spacy_early_exit calibrate "$train_dir/stage2/model-last" "corpus/$dataset/dev.spacy" \
  --output "training/$dataset/distill-stage1-final" --metrics "$metrics/calibration.json" > "logs/${dataset}_distill_stage1_calibrate.log" 2>&1
record calibrate $((SECONDS - start))

python - "$out" "$dataset" "$s1" "$stop_after" "$s2" "$threads" "$weight" "$temperature" "$log" <<'EOF'
import json, os, platform, re, sys
from pathlib import Path
path, dataset, s1, stop, s2, threads, weight, temp, log = sys.argv[1:]
rows = [line.split() for line in Path(log).read_text().splitlines() if re.match(r"^ *\d+ +\d+ ", line)]
data = json.loads(Path(path).read_text())
data.update(dataset=dataset, threads=threads if threads == "auto" else int(threads), machine=f"{os.cpu_count()} CPU cores, {platform.machine()}",
            steps={"stage1_schedule": int(s1), "stage1_run": int(stop), "stage2": int(s2)}, batch_size=16,
            stage1_distill_weight=float(weight), distill_temperature=float(temp), stage2_distill_weight=0.0,
            stage1_dev_rows=[" ".join(r) for r in rows],
            command=f"bash benchmarks/train_stage1_distill.sh {dataset} {s1} {stop} {s2} {threads}")
Path(path).write_text(json.dumps(data, indent=2) + "\n")
print(json.dumps(data, indent=2))
EOF
