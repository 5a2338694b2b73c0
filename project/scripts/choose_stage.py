"""Keep, per tuned target, the training stage that scores better on dev.

Stage 2 (exit-aware fine-tuning) usually helps at high speed-ups, but on a
small corpus it can over-fit and leave stage 1 better at every target. Both
stages are calibrated and tuned on the same dev docs; this step compares their
tuned dev scores and keeps stage 2 only where it scores strictly higher.

It writes one report in the form `evaluate --tuned` reads: every target's
chosen setting with `"stage": 1|2`, `"pipeline"` (the calibrated model of that
stage, which the setting applies to) and the dev scores of both stages, and
the same choice for full depth and for each static cut (from the cuts the
tuner measured on dev). The winner's tuned copy is published as
`final-<target>x` (publish.py), the loser's copy is removed, and the winner's
config overrides are copied to `<configs>/<target>x.json`.
"""
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer

sys.path.insert(0, str(Path(__file__).parent))
from publish import publish  # noqa: E402

from spacy_early_exit.tools.evaluation_rows import static_runs  # noqa: E402

STAGES = (1, 2)
RULE = "stage 2 where its tuned dev score is higher than stage 1's, else stage 1"


def dev_score(entry: Optional[Dict[str, Any]]) -> Optional[float]:
    """A reachable target's (or a run's) dev score; None when unreachable or unscored."""
    if entry is None or entry.get("reachable") is False:
        return None
    return entry.get("score")


def pick_stage(first: Optional[float], second: Optional[float]) -> Optional[int]:
    """The stage kept for one setting from the two dev scores (None: no score).

    Stage 2 only when it scores strictly higher: it costs a second training
    run, so a tie goes to the simpler model. RETURNS None when neither has a score.
    """
    if second is not None and (first is None or second > first):
        return 2
    if first is not None:
        return 1
    return None


def choose(entries: Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]], pipelines: Tuple[str, str]) -> Dict[str, Any]:
    """One setting's merged entry: the winner's entry with its stage, pipeline and both dev scores.

    entries: the stage-1 and stage-2 entries (None where a report lacks it).
    pipelines: the stage-1 and stage-2 calibrated pipelines.
    """
    scores = [dev_score(entry) for entry in entries]
    stage = pick_stage(*scores)
    # Unreachable on both: the stage-2 entry carries the reason as before.
    base = entries[stage - 1] if stage is not None else (entries[1] or entries[0])
    merged = dict(base or {})
    merged.update(stage=stage, pipeline=pipelines[stage - 1] if stage else None,
                  dev_scores={f"stage{s}": score for s, score in zip(STAGES, scores)})
    return merged


def by_target(report: Dict[str, Any]) -> Dict[float, Dict[str, Any]]:
    return {entry["target"]: entry for entry in report["targets"]}


def merge_reports(stage1: Dict[str, Any], stage2: Dict[str, Any]) -> Dict[str, Any]:
    """The stage-choice report from the two `tune` reports (see the module docstring).

    stage1 (Dict[str, Any]), stage2 (Dict[str, Any]): `tune` reports of the
        calibrated stage-1 and stage-2 pipelines on the same dev docs.
    RETURNS (Dict[str, Any]): targets, full and static, each with stage,
        pipeline and dev_scores; the stage-2 report's other fields.
    """
    pipelines = (stage1["pipeline"], stage2["pipeline"])
    if stage1.get("metric") != stage2.get("metric") or stage1.get("n_docs") != stage2.get("n_docs"):
        raise ValueError("The two tune reports must score the same metric on the same dev docs")
    first, second = by_target(stage1), by_target(stage2)
    targets = [choose((first.get(t), second.get(t)), pipelines) for t in sorted(set(first) | set(second))]
    static1 = {row["layer"]: row for row in static_runs(stage1)}
    static2 = {row["layer"]: row for row in static_runs(stage2)}
    static = [
        {"layer": layer, **choose((static1.get(layer), static2.get(layer)), pipelines)}
        for layer in sorted(set(static1) | set(static2))
    ]
    skipped = ("targets", "runs", "full", "pipeline")
    return {
        **{key: value for key, value in stage2.items() if key not in skipped},
        "rule": RULE,
        "stages": {f"stage{s}": {"pipeline": p, "full_score": r["full"]["score"]} for s, p, r in zip(STAGES, pipelines, (stage1, stage2))},
        "full": choose((stage1["full"], stage2["full"]), pipelines),
        "static": static,
        "targets": targets,
    }


def discard_copies(reports: List[Dict[str, Any]]) -> None:
    """Remove the tuned copies still in place (the stage not kept: the kept
    ones were moved to final-<target>x) and their emptied folders."""
    folders = set()
    for report in reports:
        for entry in report["targets"]:
            path = entry.get("pipeline_path")
            if not path:
                continue
            if Path(path).is_dir():
                shutil.rmtree(path)
            folders.add(Path(path).parent)
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def copy_configs(report: Dict[str, Any], configs_dir: Path) -> None:
    """Copy each kept target's config overrides to configs_dir/<target>x.json; drop stale ones."""
    configs_dir.mkdir(parents=True, exist_ok=True)
    for entry in report["targets"]:
        destination = configs_dir / f"{entry['target']:g}x.json"
        if entry.get("reachable") and entry.get("overrides") is not None:
            destination.write_text(json.dumps(entry["overrides"], indent=2) + "\n", encoding="utf8")
            entry["config_path"] = str(destination)
        elif destination.exists():
            destination.unlink()


def main(
    stage1_report: Path = typer.Argument(..., help="Stage 1's tune report (metrics/<dataset>/stage1/tune.json)"),
    stage2_report: Path = typer.Argument(..., help="Stage 2's tune report (metrics/<dataset>/stage2/tune.json)"),
    output_dir: Path = typer.Argument(..., help="Folder for final-<target>x (training/<dataset>)"),
    output: Path = typer.Option(..., "--output", help="The stage-choice report for evaluate (metrics/<dataset>/tune.json)"),
    configs: Path = typer.Option(..., "--configs", help="Folder for the kept <target>x.json overrides"),
) -> None:
    reports = [json.loads(path.read_text(encoding="utf8")) for path in (stage1_report, stage2_report)]
    merged = merge_reports(*reports)
    publish(merged, output_dir)
    for entry in merged["targets"]:
        if entry.get("reachable"):
            entry["pipeline_path"] = str(output_dir / f"final-{entry['target']:g}x")
    discard_copies(reports)
    copy_configs(merged, configs)
    for entry in [merged["full"], *merged["static"], *merged["targets"]]:
        name = f"{entry['target']:g}x" if "target" in entry else (f"static-{entry['layer']}" if "layer" in entry else "full")
        scores = ", ".join(f"{key} {value}" for key, value in entry["dev_scores"].items())
        print(f"{name}: stage {entry['stage']} kept (dev {scores})")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf8")
    print(f"Wrote {output}")


if __name__ == "__main__":
    typer.run(main)
