"""Move the tuned pipeline copies to training/<dataset>/final-<target>x.

`python -m spacy_early_exit tune --pipeline-out DIR` saves one copy of the
pipeline per reachable target, with the chosen exit setting written into its
config, as DIR/<target>x and records each path in its report. This step gives
them their user-facing names beside `final` (the calibrated pipeline they came
from), so `spacy.load("training/<dataset>/final-2x")` runs the 2x setting with
no override. A target that was not reachable this time has its old copy
removed, so no stale pipeline is left under a name that promises a speed-up.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import typer


def target_name(target: float, prefix: str) -> str:
    """The published folder name of a target: 2.0 -> "final-2x"."""
    return f"{prefix}{target:g}x"


def publish(report: Dict[str, Any], output_dir: Path, prefix: str = "final-") -> List[Path]:
    """Move each reachable target's tuned copy to output_dir/<prefix><target>x.

    report (Dict[str, Any]): the `tune` report, whose reachable targets carry `pipeline_path`.
    output_dir (Path): the folder of the published pipelines (training/<dataset>).
    prefix (str): the folder name before "<target>x".
    RETURNS (List[Path]): the published folders.
    """
    published: List[Path] = []
    for entry in report["targets"]:
        destination = output_dir / target_name(entry["target"], prefix)
        if destination.exists():
            shutil.rmtree(destination)
        source = entry.get("pipeline_path") if entry.get("reachable") else None
        if source is None:
            print(f"{entry['target']:g}x: not reachable on dev, no {destination.name}")
            continue
        if not Path(source).is_dir():
            raise typer.BadParameter(f"{source}: the tuned copy in the report is missing (run tune with --pipeline-out)")
        shutil.move(str(source), str(destination))
        published.append(destination)
        setting = entry.get("fields") or {key: entry.get(key) for key in ("window", "threshold")}
        shown = ", ".join(f"{key} {value}" for key, value in setting.items() if value is not None)
        print(f"{entry['target']:g}x: {destination} ({shown}; dev FLOPs x{entry.get('flops_speedup')})")
    return published


def main(
    tune_report: Path = typer.Argument(..., help="The tune report (metrics/<dataset>/tune.json)"),
    output_dir: Path = typer.Argument(..., help="Folder for final-<target>x (training/<dataset>)"),
    prefix: str = typer.Option("final-", help="Folder name before <target>x"),
) -> None:
    report = json.loads(tune_report.read_text(encoding="utf8"))
    published = publish(report, output_dir, prefix)
    sources = {Path(entry["pipeline_path"]).parent for entry in report["targets"] if entry.get("pipeline_path")}
    for folder in sources:
        # The emptied --pipeline-out folder: nothing in it is needed any more.
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    print(f"Published {len(published)} tuned pipeline(s) to {output_dir}")


if __name__ == "__main__":
    typer.run(main)
