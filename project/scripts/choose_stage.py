"""Keep, per tuned target, stage 2 unless stage 1 is clearly better on dev.

Stage 2 (exit-aware fine-tuning) is the method's final model; on a small
corpus it can over-fit and leave stage 1 better. Both stages are calibrated
and tuned on the same dev docs, but each tuned dev score is the best of many
schedules on a few hundred docs: a noisy, optimistic estimate, so the higher
one is a poor guide (on UNER English-EWT it picked stage 1 at every target and
stage 2 was better on test at every one). Here both stages' tuned settings are
run again on those dev docs and compared by a paired bootstrap over the docs
(spacy_early_exit/tools/paired_bootstrap.py): stage 1 is kept only where the
whole two-sided `--confidence` interval of its lead is above 0.
`--confidence 0` is the plain rule: the higher tuned dev score wins (a tie
keeps stage 2), with no dev runs.

It writes one report in the form `evaluate --tuned` reads: every target's
chosen setting with `"stage": 1|2`, `"pipeline"` (the calibrated model of that
stage, which the setting applies to), the dev scores of both stages, the
bootstrap (stage 1 - stage 2) and the decision with its reason, and the same
for full depth and for each static cut (from the cuts the tuner measured on
dev). The winner's tuned copy is published as `final-<target>x` (publish.py),
the loser's copy is removed, and the winner's config overrides are copied to
`<configs>/<target>x.json`.
"""
import json
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import numpy
import typer

sys.path.insert(0, str(Path(__file__).parent))
from publish import publish  # noqa: E402
from stage_runs import PipelineRuns, dev_docs  # noqa: E402

from spacy_early_exit.tools.evaluation_rows import static_fields, static_runs  # noqa: E402
from spacy_early_exit.tools.paired_bootstrap import bootstrap, score_of_counts  # noqa: E402

STAGES = (1, 2)
# A rerun of a tuned setting whose score differs from the tune report's by
# more than this (scores are rounded to 2 decimals) is not the same run.
RERUN_TOLERANCE = 0.011


@dataclass(frozen=True)
class Rule:
    """The stage rule's settings.

    confidence (float): level of the two-sided interval of stage 1's lead that
        must lie above 0 for stage 1 to be kept; 0 = the higher dev score wins.
    resamples (int): bootstrap resamples.
    seed (int): resampling seed.
    """

    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0

    def describe(self) -> str:
        if self.confidence == 0:
            return "stage 1 where its tuned dev score is higher than stage 2's, else stage 2"
        return (f"stage 2 unless stage 1's tuned setting is better on dev with {100 * self.confidence:g}% confidence "
                f"(paired bootstrap over the dev docs, {self.resamples} resamples, seed {self.seed})")


class DevRuns(Protocol):
    """Runs of each stage's calibrated pipeline on the tuner's dev docs."""

    def counts(self, stage: int, fields: Dict[str, Any]) -> numpy.ndarray:
        """Per-doc metric counts, shape (n_docs, 3), of `stage` under the exit `fields`."""

    def depth(self, stage: int) -> int:
        """The encoder depth of `stage`'s pipeline."""


def dev_score(entry: Optional[Dict[str, Any]]) -> Optional[float]:
    """A reachable target's (or a run's) dev score; None when unreachable or unscored."""
    if entry is None or entry.get("reachable") is False:
        return None
    return entry.get("score")


def decide(scores: Tuple[Optional[float], Optional[float]], result: Optional[Dict[str, Any]], confidence: float) -> Tuple[Optional[int], str]:
    """The stage kept for one setting and a one-line reason.

    scores (Tuple[Optional[float], Optional[float]]): the tuned dev scores of stage 1 and 2.
    result (Optional[Dict[str, Any]]): the bootstrap of stage 1 - stage 2
        (None when not run: one score missing, or confidence 0).
    confidence (float): see `Rule`.
    RETURNS (Tuple[Optional[int], str]): the stage (None: neither has a score) and why.
    """
    first, second = scores
    if first is None or second is None:
        if first is None and second is None:
            return None, "no stage has a dev score"
        return (2, "only stage 2 has a dev score") if first is None else (1, "only stage 1 has a dev score")
    if result is None:
        won = first > second
        return (1 if won else 2), f"plain rule: stage 1's dev score {first} is {'' if won else 'not '}higher than stage 2's {second}"
    low, high = result["ci"]
    interval = f"{result['delta']:+.2f}, {100 * confidence:g}% CI [{low:+.2f}, {high:+.2f}]"
    if low > 0:
        return 1, f"stage 1 better on dev: {interval} above 0"
    return 2, f"stage 1 not better on dev with {100 * confidence:g}% confidence: {interval}"


def compare(fields: Tuple[Callable[[], Dict[str, Any]], Callable[[], Dict[str, Any]]], scores: Tuple[float, float], runs: DevRuns, rule: Rule) -> Dict[str, Any]:
    """The paired bootstrap of stage 1 - stage 2 for one setting, with the reruns' scores.

    fields: per stage, a call giving its exit fields (a static cut needs the depth).
    scores: the tune reports' dev scores, to check the reruns against.
    """
    counts = [runs.counts(stage, get()) for stage, get in zip(STAGES, fields)]
    rerun = [score_of_counts(c) for c in counts]
    rerun = [round(100.0 * value, 2) if value is not None else None for value in rerun]
    for stage, again, tuned in zip(STAGES, rerun, scores):
        if again is None or abs(again - tuned) > RERUN_TOLERANCE:
            print(f"warning: stage {stage}'s setting scores {again} on dev again, {tuned} when tuned", file=sys.stderr)
    result = bootstrap(counts[0], counts[1], rule.resamples, rule.seed, rule.confidence)
    return {
        "delta": result["delta"], "ci": result["ci"], "confidence": rule.confidence,
        "share_stage1_not_better": result["share_a_not_better"], "std": result["std"],
        "rerun_scores": {f"stage{s}": score for s, score in zip(STAGES, rerun)},
    }


def choose(
    entries: Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]],
    pipelines: Tuple[str, str],
    fields: Tuple[Callable[[], Dict[str, Any]], Callable[[], Dict[str, Any]]],
    runs: Optional[DevRuns],
    rule: Rule,
) -> Dict[str, Any]:
    """One setting's merged entry: the kept stage's entry with its stage,
    pipeline, both dev scores, the bootstrap and the decision.

    entries: the stage-1 and stage-2 entries (None where a report lacks it).
    pipelines: the stage-1 and stage-2 calibrated pipelines.
    fields: per stage, a call giving the setting's exit fields.
    runs (Optional[DevRuns]): the dev runs; None only with confidence 0.
    rule (Rule): the rule's settings.
    """
    scores = (dev_score(entries[0]), dev_score(entries[1]))
    result = None
    if scores[0] is not None and scores[1] is not None and rule.confidence > 0:
        if runs is None:
            raise ValueError("The bootstrap needs the dev runs (or use confidence 0)")
        result = compare(fields, scores, runs, rule)
    stage, reason = decide(scores, result, rule.confidence)
    # Unreachable on both: the stage-2 entry carries the reason as before.
    base = entries[stage - 1] if stage is not None else (entries[1] or entries[0])
    merged = dict(base or {})
    merged.update(stage=stage, pipeline=pipelines[stage - 1] if stage else None,
                  dev_scores={f"stage{s}": score for s, score in zip(STAGES, scores)},
                  bootstrap=result, decision=f"stage {stage}: {reason}" if stage else reason)
    return merged


def target_fields(entry: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A tuned target's exit fields (reports before exit schedules had a flat threshold)."""
    entry = entry or {}
    return entry.get("fields") or {"exit_mode": "tokee", "window": entry.get("window"), "threshold": entry.get("threshold"), "thresholds": None}


def tuned_precision(report: Dict[str, Any]) -> Dict[str, Any]:
    """The precision the tuner ran every setting at, when it was asked for one
    (its targets' fields carry it; the full and static runs used it too)."""
    for entry in report["targets"]:
        if "precision" in (entry.get("fields") or {}):
            return {"precision": entry["fields"]["precision"]}
    return {}


def by_target(report: Dict[str, Any]) -> Dict[float, Dict[str, Any]]:
    return {entry["target"]: entry for entry in report["targets"]}


def merge_reports(stage1: Dict[str, Any], stage2: Dict[str, Any], runs: Optional[DevRuns] = None, rule: Rule = Rule()) -> Dict[str, Any]:
    """The stage-choice report from the two `tune` reports (see the module docstring).

    stage1 (Dict[str, Any]), stage2 (Dict[str, Any]): `tune` reports of the
        calibrated stage-1 and stage-2 pipelines on the same dev docs.
    runs (Optional[DevRuns]): runs of both pipelines on those docs (None only
        with confidence 0).
    rule (Rule): the rule's settings.
    RETURNS (Dict[str, Any]): targets, full and static, each with stage,
        pipeline, dev_scores, bootstrap and decision; the stage-2 report's other fields.
    """
    pipelines = (stage1["pipeline"], stage2["pipeline"])
    if stage1.get("metric") != stage2.get("metric") or stage1.get("n_docs") != stage2.get("n_docs"):
        raise ValueError("The two tune reports must score the same metric on the same dev docs")
    extra = (tuned_precision(stage1), tuned_precision(stage2))

    def fixed(fields: Dict[str, Any]) -> Tuple[Callable[[], Dict[str, Any]], Callable[[], Dict[str, Any]]]:
        return (lambda: {**fields, **extra[0]}), (lambda: {**fields, **extra[1]})

    def static(layer: int) -> Tuple[Callable[[], Dict[str, Any]], Callable[[], Dict[str, Any]]]:
        # The depth is read from the pipeline only when a run needs it.
        return tuple(lambda s=s: {**static_fields(layer, runs.depth(s)), **extra[s - 1]} for s in STAGES)  # type: ignore[return-value]

    first, second = by_target(stage1), by_target(stage2)
    targets = []
    for t in sorted(set(first) | set(second)):
        entries = (first.get(t), second.get(t))
        fields = partial(target_fields, entries[0]), partial(target_fields, entries[1])
        targets.append(choose(entries, pipelines, fields, runs, rule))
    static1 = {row["layer"]: row for row in static_runs(stage1)}
    static2 = {row["layer"]: row for row in static_runs(stage2)}
    statics = [
        {"layer": layer, **choose((static1.get(layer), static2.get(layer)), pipelines, static(layer), runs, rule)}
        for layer in sorted(set(static1) | set(static2))
    ]
    skipped = ("targets", "runs", "full", "pipeline")
    return {
        **{key: value for key, value in stage2.items() if key not in skipped},
        "rule": rule.describe(),
        "confidence": rule.confidence, "resamples": rule.resamples, "seed": rule.seed,
        "stages": {f"stage{s}": {"pipeline": p, "full_score": r["full"]["score"]} for s, p, r in zip(STAGES, pipelines, (stage1, stage2))},
        "full": choose((stage1["full"], stage2["full"]), pipelines, fixed({"exit_mode": "off"}), runs, rule),
        "static": statics,
        "targets": targets,
    }


def row_name(entry: Dict[str, Any]) -> str:
    if "target" in entry:
        return f"{entry['target']:g}x"
    return f"static-{entry['layer']}" if "layer" in entry else "full"


def format_table(merged: Dict[str, Any]) -> str:
    """The decisions, one line per setting: both dev scores, stage 1 - stage 2 and its interval, the kept stage."""
    level = f"{100 * merged['confidence']:g}% CI" if merged["confidence"] else "CI"
    lines = [f"{'setting':<10} {'stage1':>7} {'stage2':>7} {'delta':>7} {level:>18} {'P(s1<=s2)':>9}  kept"]
    for entry in [merged["full"], *merged["static"], *merged["targets"]]:
        scores = [entry["dev_scores"][f"stage{s}"] for s in STAGES]
        result = entry.get("bootstrap") or {}
        cells = [f"{value:>7.2f}" if value is not None else f"{'-':>7}" for value in scores]
        delta = f"{result['delta']:>+7.2f}" if result else f"{'-':>7}"
        ci = f"[{result['ci'][0]:+.2f}, {result['ci'][1]:+.2f}]" if result else "-"
        share = f"{result['share_stage1_not_better']:>9.3f}" if result else f"{'-':>9}"
        lines.append(f"{row_name(entry):<10} {cells[0]} {cells[1]} {delta} {ci:>18} {share}  {entry['stage'] or '-'}")
    return "\n".join(lines)


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
    dev: Optional[Path] = typer.Option(None, "--dev", help="The dev .spacy file the stages were tuned on (default: the one the tune reports name); read with their --limit"),
    confidence: float = typer.Option(0.95, "--confidence", min=0.0, max=0.999, help="Keep stage 1 only where the two-sided interval of its dev lead at this level is above 0 (paired bootstrap over dev docs); 0: the higher tuned dev score wins, nothing is rerun"),
    resamples: int = typer.Option(2000, "--resamples", min=1, help="Bootstrap resamples"),
    seed: int = typer.Option(0, "--seed", help="Resampling seed"),
    threads: str = typer.Option("auto", "--threads", help="torch threads for the dev runs: auto, a count, or 0 for torch's default"),
) -> None:
    reports = [json.loads(path.read_text(encoding="utf8")) for path in (stage1_report, stage2_report)]
    rule = Rule(confidence, resamples, seed)
    runs = None
    if confidence > 0:
        from spacy_early_exit.threads import apply_threads, parse_threads

        apply_threads(parse_threads(threads), stream=sys.stdout)
        try:
            docs = dev_docs(reports, dev)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--dev") from None
        runs = PipelineRuns((reports[0]["pipeline"], reports[1]["pipeline"]), docs, reports[1]["metric"])
    merged = merge_reports(*reports, runs=runs, rule=rule)
    publish(merged, output_dir)
    for entry in merged["targets"]:
        if entry.get("reachable"):
            entry["pipeline_path"] = str(output_dir / f"final-{entry['target']:g}x")
    discard_copies(reports)
    copy_configs(merged, configs)
    print(f"Rule: {merged['rule']}")
    print(format_table(merged))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf8")
    print(f"Wrote {output}")


if __name__ == "__main__":
    typer.run(main)
