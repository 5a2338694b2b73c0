"""Check issue 4's targets against benchmarks/results/<corpus>.json and print
the README block (one table per corpus, the checks with their margins).

    python benchmarks/summary.py conll2003 ud_en_ewt ud_zh_gsd_seg weibo
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

RESULTS = Path(__file__).parent / "results"


def row(report: Dict[str, Any], method: str, target: int) -> Optional[Dict[str, Any]]:
    return next((r for r in report["rows"] if r["method"] == method and r["target"] == target), None)


def checks(report: Dict[str, Any]) -> List[str]:
    """One line per target of the issue, with the measured margin."""
    full = row(report, "full", 1)
    lines = []
    for target, allowed in ((2, 0.3), (3, 1.0)):
        tokee = row(report, "tokee", target)
        if tokee is None:
            lines.append(f"- TOKEE {target}x: not reachable on dev")
            continue
        loss = full["score"] - tokee["score"]
        ok = tokee["flops_speedup"] >= target and loss <= allowed
        lines.append(
            f"- TOKEE at {tokee['flops_speedup']:.2f}x FLOPs loses {loss:.2f} (allowed {allowed}): {'met' if ok else 'MISSED'}"
        )
    for target, static in ((2, "static-3"), (3, "static-2")):
        tokee, sentee, cut = row(report, "tokee", target), row(report, "sentee", target), row(report, static, target)
        if tokee is None:
            continue
        others = [r for r in (sentee, cut) if r is not None]
        beaten = all(tokee["score"] > r["score"] for r in others)
        text = ", ".join(f"{r['method']} {r['score']:.2f} at {r['flops_speedup']:.2f}x" for r in others)
        lines.append(
            f"- {target}x: TOKEE {tokee['score']:.2f} at {tokee['flops_speedup']:.2f}x vs {text}: {'beats both' if beaten else 'DOES NOT beat both'}"
        )
    stage2, stage1 = row(report, "tokee", 3), row(report, "tokee-stage1", 3)
    if stage2 and stage1:
        ok = stage2["score"] > stage1["score"]
        lines.append(
            f"- 3x: stage 2 {stage2['score']:.2f} ({stage2['flops_speedup']:.2f}x) vs stage 1 {stage1['score']:.2f} "
            f"({stage1['flops_speedup']:.2f}x): {'stage 2 better' if ok else 'stage 2 NOT better'}"
        )
    for r in report["rows"]:
        if r["method"] in ("tokee", "sentee", "tokee-stage1") or r["method"].startswith("static-"):
            ratios = {b: r["wall_speedup"][b] / r["flops_speedup"] for b in r["wall_speedup"]}
            text = ", ".join(f"b{b} {v:.2f}" for b, v in ratios.items())
            ok = all(v >= 0.8 for v in ratios.values())
            lines.append(f"- wall/FLOPs speed-up, {r['method']} {r['target']}x: {text}: {'met' if ok else 'MISSED'} (target 0.8)")
    hf = row(report, "hf-full", 1)
    ratios = {b: full["words_per_second"][b] / hf["words_per_second"][b] for b in full["words_per_second"]}
    text = ", ".join(f"b{b} {v:.2f}" for b, v in ratios.items())
    lines.append(f"- full through spaCy / hf-full words per second: {text} (target 0.9)")
    return lines


def headline(reports: List[Dict[str, Any]]) -> str:
    """One line per corpus: full depth, then each TOKEE target as score change,
    FLOPs speed-up and wall-clock speed-up at batch 1 / 32."""
    head = ["corpus", "metric", "full", "TOKEE ~2x", "TOKEE ~3x", "TOKEE ~4x", "stage 1 only ~3x", "SENTEE ~2x", "static-3 (2x)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r: Optional[Dict[str, Any]], full: float) -> str:
        if r is None:
            return "–"
        wall = "/".join(f"{r['wall_speedup'][b]:.2f}" for b in ("1", "32"))
        return f"{r['score'] - full:+.2f} at {r['flops_speedup']:.2f}x (wall {wall})"

    for report in reports:
        full = row(report, "full", 1)["score"]
        cells = [report["corpus"], report["metric"], f"{full:.2f}"]
        cells += [cell(row(report, "tokee", t), full) for t in (2, 3, 4)]
        cells += [cell(row(report, "tokee-stage1", 3), full), cell(row(report, "sentee", 2), full), cell(row(report, "static-3", 2), full)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(
    corpora: List[str] = typer.Argument(..., help="Corpus names with a results JSON"),
    results: Path = typer.Option(RESULTS, help="Folder of <corpus>.json/.md"),
) -> None:
    reports = [json.loads((results / f"{corpus}.json").read_text(encoding="utf8")) for corpus in corpora]
    print(headline(reports) + "\n")
    for corpus, report in zip(corpora, reports):
        print(f"### {corpus}\n")
        print((results / f"{corpus}.md").read_text(encoding="utf8"))
        print(f"![{corpus}](benchmarks/results/{corpus}.png)\n")
        train = report.get("training") or {}
        if train:
            seconds = train["seconds"]
            print(
                f"Training: `{train['command']}` ({train['threads']} thread(s)): stage 1 {train['steps']['stage1']} updates "
                f"in {seconds['train-stage1'] / 60:.0f} min, stage 2 {train['steps']['stage2']} updates in "
                f"{seconds['train-stage2'] / 60:.0f} min, calibration {(seconds['calibrate'] + seconds['calibrate-stage1']) / 60:.1f} min.\n"
            )
        print("Checks:\n")
        print("\n".join(checks(report)) + "\n")


if __name__ == "__main__":
    typer.run(main)
