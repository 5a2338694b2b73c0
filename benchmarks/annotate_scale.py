"""Throughput of `annotate --engine ray` (2 workers x 1 thread) against
`--engine local` (1 process x 2 threads) on the demo sentences.

The texts are the '# text = ' lines of project/assets/uner_en_ewt/*.iob2,
repeated up to --docs (20,000 by default). Each run is a whole `annotate`
call, as a user makes it: the local run loads the pipeline, the Ray run starts
a local Ray instance and its actors, which each load the pipeline. The
settings take turns, --repeats times, and the median run of each is kept.

Two ratios (ray / local docs per second):
- end to end: documents / the run's whole time, startup included;
- steady: documents / the time after the first document came back, which
  leaves out loading and Ray's startup (the first batch's work goes with them).

The target is ray >= 0.8 x local on a 2-core machine. The two engines'
JSONL outputs are also compared byte for byte.

    python benchmarks/annotate_scale.py project/training/uner_en_ewt/final
    python benchmarks/annotate_scale.py PIPELINE --docs 200 --repeats 1 --output /tmp/scale.json   # a quick check
"""
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import typer

from spacy_early_exit.annotate import annotate_corpus

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "project" / "assets" / "uner_en_ewt"
RESULTS = Path(__file__).parent / "results"
SETTINGS = [
    {"name": "local 1x2", "engine": "local", "workers": 1, "threads_per_worker": 2},
    {"name": "ray 2x1", "engine": "ray", "workers": 2, "threads_per_worker": 1},
]


def demo_texts(n: int) -> List[str]:
    """n demo sentences, the corpus repeated as often as needed."""
    texts = []
    for path in sorted(CORPUS.glob("*.iob2")):
        for line in path.read_text(encoding="utf8").splitlines():
            if line.startswith("# text = "):
                texts.append(line[len("# text = "):])
    if not texts:
        raise SystemExit(f"No '# text = ' lines in {CORPUS}/*.iob2")
    return [texts[i % len(texts)] for i in range(n)]


def steady_rate(summary: Dict[str, Any]) -> float:
    busy = summary["seconds"] - summary["startup_seconds"]
    return summary["docs"] / busy if busy > 0 else float("nan")


def main(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    docs: int = typer.Option(20_000, "--docs", min=1, help="Documents per run"),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per setting, taking turns; the median is kept"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Documents per batch"),
    output: Path = typer.Option(RESULTS / "annotate_scale.json", "--output", help="Results JSON"),
) -> None:
    texts = demo_texts(docs)
    runs: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "demo.txt"
        source.write_text("".join(t + "\n" for t in texts), encoding="utf8")
        for repeat in range(repeats):
            for setting in SETTINGS:
                out = Path(tmp) / f"{setting['engine']}.jsonl"
                summary = annotate_corpus(
                    pipeline, source, out, engine=setting["engine"], workers=setting["workers"],
                    threads_per_worker=setting["threads_per_worker"], batch_size=batch_size, progress_every=30.0,
                )
                run = {"setting": setting["name"], "repeat": repeat, **summary, "steady_docs_per_second": round(steady_rate(summary), 2)}
                runs.append(run)
                print(
                    f"{setting['name']}: {summary['docs_per_second']:.1f} docs/s end to end, "
                    f"{run['steady_docs_per_second']:.1f} steady ({summary['seconds']:.1f} s, startup {summary['startup_seconds']:.1f} s)",
                    flush=True,
                )
        identical = (Path(tmp) / "local.jsonl").read_bytes() == (Path(tmp) / "ray.jsonl").read_bytes()
    medians = {}
    for setting in SETTINGS:
        mine = [r for r in runs if r["setting"] == setting["name"]]
        medians[setting["name"]] = {
            "docs_per_second": statistics.median(r["docs_per_second"] for r in mine),
            "steady_docs_per_second": statistics.median(r["steady_docs_per_second"] for r in mine),
            "words_per_second": statistics.median(r["words_per_second"] for r in mine),
        }
    local, ray = medians["local 1x2"], medians["ray 2x1"]
    report = {
        "pipeline": str(pipeline),
        "docs": docs,
        "words": runs[0]["words"],
        "batch_size": batch_size,
        "repeats": repeats,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs",
        "medians": medians,
        "ratio_end_to_end": round(ray["docs_per_second"] / local["docs_per_second"], 3),
        "ratio_steady": round(ray["steady_docs_per_second"] / local["steady_docs_per_second"], 3),
        "target": 0.8,
        "identical_output": identical,
        "runs": runs,
    }
    print(
        f"ray 2x1 / local 1x2: {report['ratio_end_to_end']:.2f} end to end, {report['ratio_steady']:.2f} steady "
        f"(target >= 0.8); outputs identical: {identical}"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
