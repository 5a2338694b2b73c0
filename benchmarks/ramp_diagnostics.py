"""Which off-ramps are wrong while confident: per-layer accuracy, calibration and confident errors.

From one full-depth pass over a split (`training.prescreen.ExitProfile`), for
every layer's off-ramp: token accuracy, expected calibration error (ECE, 10
bins over the max probability, with the pipeline's temperatures), and at a few
thresholds the share of words confident enough to exit there (uncertainty
below the threshold) and how many of those are wrong. A low layer that lets
many words out with a high error rate is what costs accuracy at speed.

    python benchmarks/ramp_diagnostics.py conll2003 [--pipeline final] [--split dev]

Writes benchmarks/results/ramps_<dataset>_<pipeline>_<split>.json and prints a Markdown table.
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import spacy
import torch
import typer

sys.path.insert(0, str(Path(__file__).parent))
from run import PROJECT, RESULTS  # noqa: E402

from spacy_early_exit.tools.data import load_examples  # noqa: E402
from spacy_early_exit.tools.evaluate import early_exit_pipes  # noqa: E402
from spacy_early_exit.tools.prescreen import ExitProfile  # noqa: E402

THRESHOLDS = (0.05, 0.1, 0.2)


def layer_rows(profile: ExitProfile, logits_ece: List[float]) -> List[Dict[str, Any]]:
    scored = profile.gold >= 0
    gold = profile.gold[scored]
    rows = []
    for layer in range(profile.num_layers):
        predicted = profile.predicted[layer][scored]
        uncertainty = profile.uncertainty[layer][scored]
        right = predicted == gold
        row: Dict[str, Any] = {"layer": layer + 1, "accuracy": round(float(right.float().mean()), 4), "ece": logits_ece[layer]}
        if profile.outside is not None:
            entity = gold != profile.outside
            row["accuracy_non_outside"] = round(float(right[entity].float().mean()), 4) if entity.any() else None
        for threshold in THRESHOLDS:
            confident = uncertainty < threshold
            share = float(confident.float().mean())
            wrong = float((~right[confident]).float().mean()) if confident.any() else 0.0
            row[f"exit_share@{threshold:g}"] = round(share, 4)
            row[f"error_when_exiting@{threshold:g}"] = round(wrong, 4)
        rows.append(row)
    return rows


def expected_calibration_errors(pipe, examples, bins: int = 10) -> List[float]:
    """ECE of every off-ramp at full depth, with the pipe's temperatures."""
    logits, gold = pipe.layer_logits(examples)
    out = []
    for layer in range(logits.shape[0]):
        scaled = torch.as_tensor(logits[layer]) / pipe.policy.layer_temperature(layer + 1)
        probs = torch.softmax(scaled, dim=-1)
        confidence, predicted = probs.max(dim=-1)
        right = (predicted == torch.as_tensor(gold)).float()
        edges = torch.linspace(0, 1, bins + 1)
        ece = 0.0
        for low, high in zip(edges[:-1], edges[1:]):
            in_bin = (confidence > low) & (confidence <= high)
            if in_bin.any():
                ece += float(in_bin.float().mean()) * abs(float(right[in_bin].mean()) - float(confidence[in_bin].mean()))
        out.append(round(ece, 4))
    return out


def main(
    dataset: str = typer.Argument(..., help="Corpus name (project/corpus/<dataset>)"),
    pipeline: str = typer.Option("final", help="Pipeline under project/training/<dataset>/"),
    split: str = typer.Option("dev", help="dev or test"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    if split not in ("dev", "test"):
        raise typer.BadParameter(f"--split must be dev or test, not {split!r}")
    torch.set_num_threads(threads)
    nlp = spacy.load(PROJECT / "training" / dataset / pipeline)
    examples = load_examples(nlp, PROJECT / "corpus" / dataset / f"{split}.spacy")
    pipe = early_exit_pipes(nlp)[0][1]
    profile = ExitProfile.collect(pipe, examples)
    rows = layer_rows(profile, expected_calibration_errors(pipe, examples))
    report = {"corpus": dataset, "pipeline": pipeline, "split": split, "docs": len(examples), "thresholds": list(THRESHOLDS),
              "command": "python benchmarks/ramp_diagnostics.py " + " ".join(sys.argv[1:]), "layers": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ramps_{dataset}_{pipeline}_{split}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    keys = [k for k in rows[0] if k != "layer"]
    print("| layer | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for row in rows:
        print(f"| {row['layer']} | " + " | ".join("–" if row[k] is None else f"{row[k]:.3f}" for k in keys) + " |")
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
