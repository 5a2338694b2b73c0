"""Markdown tables from the workflow's metrics, for README.md.

    python benchmarks/tables.py project/metrics/uner_en_ewt

Prints the test-set table of `evaluate` (calibrated, tuned on dev; each row
on the stage kept on dev, with the static cuts around the targets) and, when
the `stage1-baseline` workflow has run, stage 1 alone next to that table at
each setting.
"""
import json
from pathlib import Path
from typing import Any, Dict, List

import typer


def load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text(encoding="utf8"))


def evaluation_table(report: Dict[str, Any]) -> str:
    metric = report["metric"]
    sizes = list(report["rows"][0]["words_per_second"])
    # Tables before the stage choice have no stage per row.
    staged = any("stage" in row for row in report["rows"])
    head = ["method"] + (["stage"] if staged else []) + [metric, "FLOPs x"] + [f"wall x (b{b})" for b in sizes] + [f"words/s (b{b})" for b in sizes]
    head += ["mean exit layer", "window", "threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells: List[str] = [row["method"]] + ([str(row.get("stage") or "–")] if staged else [])
        cells += [f"{row['score']:.2f}", f"{row['flops_speedup']:.2f}"]
        cells += [f"{row['wall_speedup'][b]:.2f}" for b in sizes]
        cells += [f"{row['words_per_second'][b]:.0f}" for b in sizes]
        cells += [f"{row['mean_exit_layer']:.2f}", str(row["window"] if row["window"] is not None else "–"),
                  str(row["threshold"] if row["threshold"] is not None else "–")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stages_table(stage1: Dict[str, Any], stage2: Dict[str, Any]) -> str:
    metric = stage2["metric"]
    first = {row["method"]: row for row in stage1["rows"]}
    lines = [
        f"| setting | stage 1 {metric} | stage 1 FLOPs x | kept {metric} | kept FLOPs x | kept stage | kept - stage 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in stage2["rows"]:
        base = first.get(row["method"])
        if base is None:
            continue
        lines.append(
            f"| {row['method']} | {base['score']:.2f} | {base['flops_speedup']:.2f} | {row['score']:.2f} | "
            f"{row['flops_speedup']:.2f} | {row.get('stage', 2)} | {row['score'] - base['score']:+.2f} |"
        )
    return "\n".join(lines)


def main(metrics_dir: Path = typer.Argument(..., help="project/metrics/<dataset>")) -> None:
    stage2 = load(metrics_dir / "evaluate.json")
    print(evaluation_table(stage2))
    stage1_path = metrics_dir / "stage1" / "evaluate.json"
    if stage1_path.exists():
        print()
        print(stages_table(load(stage1_path), stage2))


if __name__ == "__main__":
    typer.run(main)
