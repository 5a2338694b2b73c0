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


# Issue 11's targets: (target, least test FLOPs speed-up, most score loss).
TOKEE_TARGETS = ((2, 1.95, 0.3), (3, 2.9, 1.0))
# A static-k or SENTEE row "about as fast" as a TOKEE row: at least this share of its speed-up.
AS_FAST = 0.95
# ... and TOKEE may trail it by at most this much.
TOLERANCE = 0.05


def checks(report: Dict[str, Any]) -> List[str]:
    """One line per target of the issue, with the measured margin."""
    full = row(report, "full", 1)
    lines = []
    if report["corpus"] == "conll2003":
        lines.append(f"- full depth {full['score']:.2f} (target >= 85.0): {'met' if full['score'] >= 85.0 else 'MISSED'}")
    for target, least, allowed in TOKEE_TARGETS:
        tokee = row(report, "tokee", target)
        if tokee is None:
            lines.append(f"- TOKEE {target}x: not reachable on dev")
            continue
        loss = full["score"] - tokee["score"]
        ok = tokee["flops_speedup"] >= least and loss <= allowed
        dev = f" (dev {tokee['dev_flops_speedup']:.2f}x)" if tokee.get("dev_flops_speedup") else ""
        lines.append(
            f"- TOKEE {target}x: {tokee['flops_speedup']:.2f}x FLOPs on test{dev} (target >= {least}), "
            f"loses {loss:.2f} (allowed {allowed}): {'met' if ok else 'MISSED'}"
        )
    baselines = [r for r in report["rows"] if r["method"] == "sentee" or r["method"].startswith("static-")]
    for tokee in (r for r in report["rows"] if r["method"] == "tokee"):
        rivals = [r for r in baselines if r["flops_speedup"] >= AS_FAST * tokee["flops_speedup"]]
        beaten = [r for r in rivals if r["score"] > tokee["score"] + TOLERANCE]
        text = ", ".join(f"{r['method']} {r['score']:.2f} at {r['flops_speedup']:.2f}x" for r in rivals) or "none"
        verdict = "no rival ahead" if not beaten else "BEATEN by " + ", ".join(r["method"] for r in beaten)
        lines.append(f"- TOKEE {tokee['target']}x {tokee['score']:.2f} at {tokee['flops_speedup']:.2f}x; rivals as fast: {text}: {verdict}")
    stage2, stage1 = row(report, "tokee", 3), row(report, "tokee-stage1", 3)
    if stage2 and stage1:
        ok = stage2["score"] > stage1["score"]
        lines.append(
            f"- 3x: stage 2 {stage2['score']:.2f} ({stage2['flops_speedup']:.2f}x) vs stage 1 {stage1['score']:.2f} "
            f"({stage1['flops_speedup']:.2f}x): {'stage 2 better' if ok else 'stage 2 NOT better'}"
        )
    for method, where in (("tokee-distill", "stage 2"), ("tokee-distill-stage1", "stage 1")):
        for target in (2, 3):
            base, distill = row(report, "tokee", target), row(report, method, target)
            if base and distill:
                lines.append(
                    f"- {target}x: self-distillation in {where} {distill['score']:.2f} ({distill['flops_speedup']:.2f}x) vs "
                    f"the paper's loss {base['score']:.2f} ({base['flops_speedup']:.2f}x)"
                )
    if "wall_speedup" not in full:
        return lines
    for r in report["rows"]:
        if r["method"] in ("tokee", "sentee", "tokee-stage1") or r["method"].startswith("static-"):
            ratios = {b: r["wall_speedup"][b] / r["flops_speedup"] for b in r["wall_speedup"]}
            text = ", ".join(f"b{b} {v:.2f}" for b, v in ratios.items())
            lines.append(f"- wall/FLOPs speed-up, {r['method']} {r['target']}x: {text}")
    hf = row(report, "hf-full", 1)
    ratios = {b: full["words_per_second"][b] / hf["words_per_second"][b] for b in full["words_per_second"]}
    text = ", ".join(f"b{b} {v:.2f}" for b, v in ratios.items())
    lines.append(f"- full through spaCy / hf-full words per second: {text}")
    return lines


def headline(reports: List[Dict[str, Any]]) -> str:
    """One line per corpus: full depth, then each TOKEE target as score change,
    FLOPs speed-up and wall-clock speed-up at batch 1 / 32."""
    head = ["corpus", "metric", "full", "TOKEE ~2x", "TOKEE ~3x", "TOKEE ~4x", "stage 1 only ~3x", "distillation ~3x",
            "SENTEE ~2x", "static-3 (2x)", "static-2 (3x)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r: Optional[Dict[str, Any]], full: float) -> str:
        if r is None:
            return "–"
        if "wall_speedup" not in r:
            return f"{r['score'] - full:+.2f} at {r['flops_speedup']:.2f}x"
        wall = "/".join(f"{r['wall_speedup'][b]:.2f}" for b in ("1", "32"))
        return f"{r['score'] - full:+.2f} at {r['flops_speedup']:.2f}x (wall {wall})"

    for report in reports:
        full = row(report, "full", 1)["score"]
        cells = [report["corpus"], report["metric"], f"{full:.2f}"]
        cells += [cell(row(report, "tokee", t), full) for t in (2, 3, 4)]
        cells += [cell(row(report, "tokee-stage1", 3), full), cell(row(report, "tokee-distill", 3), full),
                  cell(row(report, "sentee", 2), full), cell(row(report, "static-3", 2), full), cell(row(report, "static-2", 3), full)]
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
        table = results / f"{corpus}.md"
        if table.exists():
            print(table.read_text(encoding="utf8"))
            print(f"![{corpus}](benchmarks/results/{corpus}.png)\n")
        train = report.get("training") or {}
        if train:
            seconds = train["seconds"]
            parts = ", ".join(f"{step} {value / 60:.0f} min" for step, value in seconds.items())
            print(f"Training: `{train['command']}` ({train['threads']} thread(s), {train['steps']} updates of 16 sentences): {parts}.\n")
        print("Checks:\n")
        print("\n".join(checks(report)) + "\n")


if __name__ == "__main__":
    typer.run(main)
