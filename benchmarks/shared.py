"""One shared early-exit encoder against two separate pipelines and spacy-transformers.

Entities and UPOS on the same documents (the joined UNER + UD English-EWT
test split, `project/corpus/uner_ud_en_ewt/test.spacy`), three ways:

- `shared-full`, `shared-tokee`: one `tokee_transformer` with a listening
  `tokee_ner` and `tokee_tagger` (training/uner_ud_en_ewt/final), at full
  depth and at each target of its tune report (metrics/uner_ud_en_ewt/tune.json:
  per target the exit fields and the calibrated pipeline of the stage kept);
- `separate-full`, `separate-tokee`: a standalone `tokee_ner` pipeline and a
  standalone `tokee_tagger` pipeline run one after the other on the same docs
  (the tagger pipeline gets the NER pipeline's docs), each at full depth or at
  its own tuned setting for the target;
- `spacy-trf`: spacy-transformers' `transformer` + listening `ner` and
  `morphologizer` (spaCy's `tagger` on a corpus with its own tag set, such as
  CoNLL-2003's PTB column) on the same backbone (benchmarks/train_spacy_trf.sh),
  full depth.

Every row is scored on the whole test split (NER F1 and POS accuracy, in
percent) and timed in this one process, rows interleaved every 64 docs
(`tools.evaluate.interleaved_seconds`), median of the repetitions, over the
first --timing-docs test docs at batch sizes 1 and 32. words/s is for the
whole row: both tasks.

`flops_speedup` is one full-depth pass of the shared encoder with both heads
(the sum of `full_flops` in the shared `doc._.early_exit` record over the test
docs) over the row's FLOPs: the sum of `flops` of every early-exit record the
row writes (both separate pipelines count). spacy-transformers writes no
record: its FLOPs are the same analytic model (encoder/cost.py) applied to its
strided wordpiece windows, encoder layers only (its parser and tagger layers
are not counted, as the shared record does count its off-ramps).

    python benchmarks/shared.py --threads 1 --timing-docs 500 --repeats 5
    python benchmarks/shared.py --tiny          # tiny random models, seconds

Writes benchmarks/results/shared_<dataset>.json and .md.
"""
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import spacy
import torch
import typer
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_early_exit.encoder.backbone import backbone_spec
from spacy_early_exit.encoder.cost import CostModel
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.evaluate import cost_summary, early_exit_pipes, exit_settings, interleaved_seconds
from spacy_early_exit.tools.options import parse_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECT = ROOT / "project"
TRF_CONFIG = ROOT / "benchmarks" / "configs" / "spacy_trf_ner_tagger.cfg"
NER_METRIC = "ents_f"
POS_METRIC = "pos_acc"
FULL = {"exit_mode": "off"}


@dataclass
class Stage:
    """One pipeline of a row.

    nlp (Language): the loaded pipeline.
    path (str): where it was loaded from (for the report).
    fields (Optional[Dict[str, Any]]): the exit fields it runs under; None for
        a pipeline without early exit (spacy-transformers).
    """

    nlp: Language
    path: str
    fields: Optional[Dict[str, Any]] = None


@dataclass
class System:
    """One row: pipelines run one after the other on the same docs.

    method (str): shared-full | shared-tokee | separate-full | separate-tokee | spacy-trf.
    target (int): the FLOPs speed-up the tuned settings aim at (1: full depth).
    precision (str): what the early-exit encoders compute in.
    stages (List[Stage]): the pipelines, in order.
    result (Dict[str, Any]): scores, FLOPs and (after timing) words/s.
    """

    method: str
    target: int
    precision: str
    stages: List[Stage]
    result: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}@{self.target}/{self.precision}"

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Every early-exit stage under its exit fields, restored afterwards."""
        with ExitStack() as stack:
            for stage in self.stages:
                if stage.fields is not None:
                    stack.enter_context(exit_settings(stage.nlp, stage.fields))
            yield

    def annotate(self, texts: Sequence[str], batch_size: int) -> Iterable[Doc]:
        """The docs of `texts` after every stage; call inside `settings()`.

        A later stage gets the earlier stage's Doc objects, so the tokenizer
        runs once and every stage's annotations and records end up on one doc.
        """
        docs: Iterable[Union[str, Doc]] = texts
        for stage in self.stages:
            docs = stage.nlp.pipe(docs, batch_size=batch_size)
        return docs  # type: ignore[return-value]

    def run(self, texts: Sequence[str], batch_size: int) -> List[Doc]:
        with self.settings():
            return list(self.annotate(texts, batch_size))

    def runner(self, texts: Sequence[str]) -> Callable[[slice, int], None]:
        """The call `interleaved_seconds` times: a slice of `texts` through every stage."""

        def run(part: slice, batch_size: int) -> None:
            with self.settings():
                for _ in self.annotate(texts[part], batch_size):
                    pass

        return run

    def as_json(self) -> Dict[str, Any]:
        return {
            "method": self.method, "target": self.target, "precision": self.precision,
            "ner_f": None, "pos_acc": None, "flops_speedup": None, "words_per_second": None, **self.result,
            "pipelines": [s.path for s in self.stages], "fields": [s.fields for s in self.stages],
        }


def trf_encoder_flops(docs: Sequence[Doc], nlp: Language) -> int:
    """Encoder FLOPs of a spacy-transformers pipeline on annotated docs.

    The analytic model of encoder/cost.py on each wordpiece window the
    transformer ran (strided windows overlap, and the overlap is paid for),
    every layer over every piece: what `full_flops` counts for the early-exit
    encoder, without off-ramps.

    docs (Sequence[Doc]): docs the pipeline annotated (`doc._.trf_data` set).
    nlp (Language): the pipeline.
    RETURNS (int): the FLOPs.
    """
    names = [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == "transformer"]
    if not names:
        raise ValueError(f"The pipeline {nlp.pipe_names} has no spacy-transformers 'transformer'")
    spec = backbone_spec(nlp.get_pipe(names[0]).model.transformer)
    cost = CostModel(spec.hidden_size, spec.intermediate_size, 0)
    return sum(
        spec.num_layers * int(cost.layer_flops(n, n)) for doc in docs for n in doc._.trf_data.wordpieces.lengths
    )


def row_flops(system: System, docs: Sequence[Doc]) -> int:
    """FLOPs the row spent on `docs`: every early-exit stage's records, or the
    spacy-transformers estimate (`trf_encoder_flops`)."""
    total = 0
    for stage in system.stages:
        if stage.fields is None:
            total += trf_encoder_flops(docs, stage.nlp)
        else:
            total += int(cost_summary(docs, stage.nlp)["flops"])
    return total


def score_system(system: System, test: Sequence[Example], pos_metric: str) -> Tuple[List[Doc], Dict[str, Any]]:
    """Run the row over the test split; RETURNS its docs and NER F1, POS accuracy (0-100) and FLOPs."""
    docs = system.run([eg.reference.text for eg in test], batch_size=64)
    examples = [Example(doc, eg.reference) for doc, eg in zip(docs, test)]
    scores: Dict[str, Any] = {}
    for stage in system.stages:
        # Each pipeline's own scorers: the NER pipeline reports ents_*, the
        # tagger pipeline pos_acc; a joint pipeline reports both.
        scores.update({k: v for k, v in Scorer(stage.nlp).score(examples).items() if v is not None})
    missing = [key for key in (NER_METRIC, pos_metric) if key not in scores]
    if missing:
        raise ValueError(f"{system.key}: no {missing} in the scores {sorted(scores)}")
    result = {"ner_f": round(100 * float(scores[NER_METRIC]), 2), "pos_acc": round(100 * float(scores[pos_metric]), 2),
              "flops": row_flops(system, docs)}
    return docs, result


@dataclass(frozen=True)
class Tuned:
    """One tuned target of a tune report: the exit fields and the pipeline they apply to."""

    target: int
    fields: Dict[str, Any]
    pipeline: Path


def tuned_targets(report_path: Path, project: Path, default: Path, targets: Sequence[int]) -> Tuple[Dict[int, Tuned], List[str]]:
    """The reachable `targets` of a `tune` or stage-choice report.

    A stage-choice report (project/scripts/choose_stage.py) names per target the
    calibrated pipeline of the stage kept, relative to the project folder; a
    plain `tune` report's targets all apply to `default`.

    RETURNS (Tuple[Dict[int, Tuned], List[str]]): per target its setting, and a
        line per target the report does not reach.
    """
    if not report_path.exists():
        raise typer.BadParameter(f"No tune report at {report_path}: run the project's tune and choose-stage first")
    report = json.loads(report_path.read_text(encoding="utf8"))
    found: Dict[int, Tuned] = {}
    missing: List[str] = []
    entries = {round(float(e["target"])): e for e in report["targets"]}
    for target in targets:
        entry = entries.get(target)
        if entry is None or not entry.get("reachable"):
            missing.append(f"{report_path}: {target}x " + ("not tuned" if entry is None else f"unreachable ({entry.get('reason')})"))
            continue
        path = Path(entry["pipeline"]) if entry.get("pipeline") else default
        found[target] = Tuned(target, dict(entry["fields"]), path if path.is_absolute() else project / path)
    return found, missing


class Pipelines:
    """Loads each pipeline folder once: rows on the same folder share the object
    (exit settings are per row and restored after each run)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loaded: Dict[Path, Language] = {}

    def stage(self, path: Path, fields: Optional[Dict[str, Any]]) -> Stage:
        path = path.resolve()
        if not path.exists():
            raise typer.BadParameter(f"No pipeline at {path}")
        if path not in self.loaded:
            self.loaded[path] = spacy.load(path)
        try:
            shown = str(path.relative_to(self.root))
        except ValueError:
            shown = str(path)
        return Stage(self.loaded[path], shown, fields)


@dataclass(frozen=True)
class Layout:
    """Where the benchmark reads its inputs.

    test (Path): the joined test split.
    shared (Path), ner (Path), tagger (Path): the calibrated full pipelines.
    shared_tune (Path), ner_tune (Path), tagger_tune (Path): their stage-choice (or tune) reports.
    trf (Path): the spacy-transformers pipeline.
    project (Path): the folder the reports' relative paths start from.
    """

    test: Path
    shared: Path
    ner: Path
    tagger: Path
    shared_tune: Path
    ner_tune: Path
    tagger_tune: Path
    trf: Path
    project: Path

    @classmethod
    def of_project(cls, project: Path, dataset: str, ner_dataset: str, tagger_dataset: str, trf: Optional[Path]) -> "Layout":
        training, metrics = project / "training", project / "metrics"
        return cls(
            test=project / "corpus" / dataset / "test.spacy",
            shared=training / dataset / "final", ner=training / ner_dataset / "final", tagger=training / tagger_dataset / "final",
            shared_tune=metrics / dataset / "tune.json", ner_tune=metrics / ner_dataset / "tune.json",
            tagger_tune=metrics / tagger_dataset / "tune.json",
            trf=trf or training / f"spacy_trf_{dataset}" / "model-best", project=project,
        )


def build_rows(layout: Layout, targets: Sequence[int], precisions: Sequence[str] = ()) -> Tuple[List[System], List[str]]:
    """Every row, with its pipelines loaded; RETURNS the rows and the targets left out.

    precisions (Sequence[str]): more precisions ("int8", "bf16") for the tokee
        rows at the lowest target.
    """
    pipes = Pipelines(layout.project)
    shared, shared_missing = tuned_targets(layout.shared_tune, layout.project, layout.shared, targets)
    ner, ner_missing = tuned_targets(layout.ner_tune, layout.project, layout.ner, targets)
    tagger, tagger_missing = tuned_targets(layout.tagger_tune, layout.project, layout.tagger, targets)
    missing_trf: List[str] = []
    rows = [System("shared-full", 1, "fp32", [pipes.stage(layout.shared, FULL)])]
    for t in targets:
        if t in shared:
            rows.append(System("shared-tokee", t, "fp32", [pipes.stage(shared[t].pipeline, shared[t].fields)]))
    rows.append(System("separate-full", 1, "fp32", [pipes.stage(layout.ner, FULL), pipes.stage(layout.tagger, FULL)]))
    for t in targets:
        if t in ner and t in tagger:
            stages = [pipes.stage(ner[t].pipeline, ner[t].fields), pipes.stage(tagger[t].pipeline, tagger[t].fields)]
            rows.append(System("separate-tokee", t, "fp32", stages))
    if layout.trf.exists():
        rows.append(System("spacy-trf", 1, "fp32", [pipes.stage(layout.trf, None)]))
    else:
        # Reported in `unreachable` (a row the table lacks), not an error: the
        # spacy-transformers training is hours on some corpora.
        missing_trf = [f"spacy-trf: no pipeline at {layout.trf} (benchmarks/train_spacy_trf.sh)"]
    # The fp32-tuned schedules run in another precision: what switching it on a
    # tuned pipeline gives (benchmarks/precision.py tunes per precision).
    lowest = [r for r in rows if r.method in ("shared-tokee", "separate-tokee") and r.target == min(targets)]
    for precision in precisions:
        for row in lowest:
            stages = [Stage(s.nlp, s.path, {**(s.fields or {}), "precision": precision}) for s in row.stages]
            rows.append(System(row.method, row.target, precision, stages))
    ner_names = {name for name, _ in early_exit_pipes(pipes.stage(layout.ner, FULL).nlp)}
    tagger_names = {name for name, _ in early_exit_pipes(pipes.stage(layout.tagger, FULL).nlp)}
    if ner_names & tagger_names:
        # One doc carries both separate pipelines' records, keyed by component name.
        raise typer.BadParameter(f"The NER and tagger pipelines share component names {sorted(ner_names & tagger_names)}")
    return rows, shared_missing + ner_missing + tagger_missing + missing_trf


def tagger_metric(corpus: Path) -> str:
    """The tagger's score on this corpus: `pos_acc` (UPOS) or `tag_acc` (a
    tag set of its own, e.g. CoNLL-2003's PTB column), from prepare.py's
    meta.json; the report's `pos_acc` field holds it either way."""
    meta = corpus / "meta.json"
    if meta.exists():
        return json.loads(meta.read_text(encoding="utf8")).get("metrics", {}).get("tagger", POS_METRIC)
    return POS_METRIC


def shared_full_flops(docs: Sequence[Doc], nlp: Language) -> int:
    """One full-depth pass of the shared encoder with all its heads: the sum of
    `full_flops` of its record (the `tokee_transformer`'s) over `docs`."""
    name = early_exit_pipes(nlp)[0][0]
    if nlp.get_pipe_meta(name).factory != "tokee_transformer":
        raise ValueError(f"The shared pipeline {nlp.pipe_names} does not start with a tokee_transformer")
    return int(cost_summary(docs, nlp)["full_flops"])


def time_rows(rows: Sequence[System], texts: List[str], n_words: int, batch_sizes: Sequence[int], repeats: int) -> None:
    """Median words/s per row and batch size, rows interleaved (tools.evaluate.interleaved_seconds)."""
    runners = {row.key: row.runner(texts) for row in rows}
    # Warm-up: first-call allocations and each precision's converted layers.
    for run in runners.values():
        run(slice(None), max(batch_sizes))
    times = interleaved_seconds(runners, len(texts), batch_sizes, repeats)
    for row in rows:
        medians = {b: statistics.median(times[row.key][b]) for b in batch_sizes}
        row.result["words_per_second"] = {str(b): round(n_words / medians[b], 1) for b in batch_sizes}
        row.result["seconds"] = {str(b): [round(t, 3) for t in times[row.key][b]] for b in batch_sizes}


def markdown(report: Dict[str, Any]) -> str:
    sizes = [str(b) for b in report["batch_sizes"]]
    head = ["method", "target", "precision", "NER F1", "POS acc", "FLOPs x"] + [f"words/s b{b}" for b in sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        wps = r.get("words_per_second") or {}
        cells = [r["method"], f"{r['target']}x", r["precision"], f"{r['ner_f']:.2f}", f"{r['pos_acc']:.2f}",
                 f"{r['flops_speedup']:.2f}" + ("*" if r["method"] == "spacy-trf" else "")]
        cells += [f"{wps[b]:.0f}" if b in wps else "\u2013" for b in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(report: Dict[str, Any], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    header = (
        f"{report['dataset']} test split ({report['test_docs']} docs): NER F1 and POS accuracy; FLOPs speed-up against "
        f"one full-depth pass of the shared encoder with both heads. Timing: first {report['timing_docs']} test docs, "
        f"{report['repeats']} interleaved repetitions, median, {report['threads']} threads, {report['machine']}. "
        "\\* spacy-trf: encoder FLOPs only (its parser and tagger are not counted).\n\n"
    )
    table = markdown(report)
    stem.with_suffix(".md").write_text(header + table + "\n", encoding="utf8")
    print(table)
    print(f"Wrote {stem}.json/.md")


# -- --tiny: the same run on tiny random models ----------------------------------

# Universal POS of spacy_early_exit.testing.NER_DATA's tokens (its NER_TAGS in UPOS).
TINY_POS = [
    "PROPN PROPN VERB ADP PROPN PROPN PUNCT",
    "PROPN AUX DET NOUN ADP PROPN",
    "PROPN VERB NOUN AUX VERB DET ADJ NOUN",
    "PRON AUX ADP PROPN ADP PROPN",
]
TINY_EXIT = {"threshold": 0.5, "window": 1, "temperatures": [0.25] * 4}


def tiny_examples(nlp: Language) -> List[Example]:
    """NER_DATA with entities and UPOS, tokenized by `nlp`."""
    from spacy_early_exit.testing import NER_DATA

    return [Example.from_dict(nlp.make_doc(text), {"entities": ents, "pos": pos.split()})
            for (text, ents), pos in zip(NER_DATA, TINY_POS)]


def tiny_tokee(model_dir: Path, heads: Sequence[str], shared: bool, steps: int = 15) -> Language:
    """A trained tiny early-exit pipeline: a shared `tokee_transformer` with
    listening `heads`, or the one standalone head in `heads`."""
    from spacy_early_exit.testing import LISTENER, TINY_FINE_TUNING

    nlp = spacy.blank("en")
    encoder = {"model": {"name": str(model_dir)}, "fine_tuning": dict(TINY_FINE_TUNING), **TINY_EXIT}
    if shared:
        nlp.add_pipe("tokee_transformer", config=encoder)
    for head in heads:
        pos = {"attribute": "pos"} if head == "tokee_tagger" else {}
        nlp.add_pipe(head, config={"model": dict(LISTENER), **pos} if shared else {**encoder, **pos})
    examples = tiny_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def tiny_trf(model_dir: Path, steps: int = 5) -> Language:
    """benchmarks/configs/spacy_trf_ner_tagger.cfg on the tiny backbone, trained a few steps."""
    config = spacy.util.load_config(TRF_CONFIG, overrides={"paths.backbone": str(model_dir)}, interpolate=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    examples = tiny_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def tiny_project(root: Path, dataset: str) -> Layout:
    """A project layout of tiny pipelines, tune reports and a test split, as the real run reads it."""
    from spacy_early_exit.testing import save_tiny_backbone

    model_dir = save_tiny_backbone(root / "tiny-bert")
    pipelines = {
        dataset: tiny_tokee(model_dir, ("tokee_ner", "tokee_tagger"), shared=True),
        "tiny_ner": tiny_tokee(model_dir, ("tokee_ner",), shared=False),
        "tiny_tagger": tiny_tokee(model_dir, ("tokee_tagger",), shared=False),
    }
    for name, nlp in pipelines.items():
        (root / "training" / name).mkdir(parents=True)
        nlp.to_disk(root / "training" / name / "final")
        # A stage-choice report's targets: exit fields and the pipeline, relative to the project.
        targets = [{"target": float(t), "reachable": True, "pipeline": f"training/{name}/final",
                    "fields": {"exit_mode": "tokee", "window": 1, "threshold": threshold, "thresholds": None}}
                   for t, threshold in ((2, 0.3), (3, 0.6))]
        report = root / "metrics" / name / "tune.json"
        report.parent.mkdir(parents=True)
        report.write_text(json.dumps({"targets": targets}, indent=2), encoding="utf8")
    (root / "training" / f"spacy_trf_{dataset}").mkdir(parents=True)
    tiny_trf(model_dir).to_disk(root / "training" / f"spacy_trf_{dataset}" / "model-best")
    test = root / "corpus" / dataset / "test.spacy"
    test.parent.mkdir(parents=True)
    reference = pipelines[dataset]
    extra = [("Smith said Google will be in Paris", [(0, 5, "PER"), (11, 17, "ORG"), (29, 34, "LOC")])]
    docs = [eg.reference for eg in tiny_examples(reference)]
    for text, ents in extra:
        doc = reference.make_doc(text)
        doc.ents = [doc.char_span(s, e, label=label) for s, e, label in ents]
        for token, pos in zip(doc, "PROPN VERB PROPN AUX AUX ADP PROPN".split()):
            token.pos_ = pos
        docs.append(doc)
    DocBin(docs=docs * 3).to_disk(test)
    return Layout.of_project(root, dataset, "tiny_ner", "tiny_tagger", None)


def main(
    dataset: str = typer.Option("uner_ud_en_ewt", help="The joined corpus and shared pipeline (corpus/, training/, metrics/<dataset>)"),
    ner_dataset: str = typer.Option("uner_en_ewt", help="The separate NER pipeline's dataset (training/<name>/final, metrics/<name>/tune.json)"),
    tagger_dataset: str = typer.Option("uner_ud_en_ewt_tagger", help="The separate UPOS tagger's dataset (training/<name>/final, metrics/<name>/tune.json)"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    trf_pipeline: Optional[Path] = typer.Option(None, help="The spacy-transformers pipeline (default: <project>/training/spacy_trf_<dataset>/model-best)"),
    targets: str = typer.Option("2,3", help="Tuned targets (FLOPs speed-ups) of the tokee rows"),
    int8: bool = typer.Option(False, "--int8", help="Add shared-tokee and separate-tokee at the lowest target in int8 (the fp32-tuned schedules)"),
    bf16: bool = typer.Option(False, "--bf16", help="The same in bf16 (fastest on CPUs with AMX)"),
    timing_docs: int = typer.Option(500, help="The first N test docs are timed (0: all); every score uses all"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes timed"),
    repeats: int = typer.Option(5, min=1, help="Timing repetitions (median kept)"),
    threads: int = typer.Option(1, help="torch intra-op threads (0: torch's default)"),
    output_dir: Optional[Path] = typer.Option(None, help="Where shared_<dataset>.json/.md go (default: benchmarks/results; a temporary folder with --tiny)"),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random in-memory models instead of the trained pipelines (a check that runs in seconds)"),
    name: Optional[str] = typer.Option(None, help="Report file name without extension (default: shared_<dataset>)"),
) -> None:
    started = time.time()
    # Rebuilt from the options (not sys.argv, which is the caller's when run in-process).
    command = "python benchmarks/shared.py " + (
        "--tiny" if tiny else f"--dataset {dataset} --ner-dataset {ner_dataset} --tagger-dataset {tagger_dataset}"
        + (f" --trf-pipeline {trf_pipeline}" if trf_pipeline else "")
    ) + (f" --name {name}" if name else "") + f" --targets {targets}" + (" --int8" if int8 else "") + (" --bf16" if bf16 else "") + (
        f" --timing-docs {timing_docs} --batch-sizes {batch_sizes} --repeats {repeats} --threads {threads}"
    )
    if threads:
        torch.set_num_threads(threads)
    chosen = sorted(set(parse_numbers(targets, int, "--targets")))
    sizes = parse_numbers(batch_sizes, int, "--batch-sizes")
    with tempfile.TemporaryDirectory() as tmp:
        if tiny:
            dataset = "tiny"
            layout = tiny_project(Path(tmp) / "project", dataset)
            # Kept after the run (the models' folder is not): a tiny table is a check, not a result.
            output_dir = output_dir or Path(tempfile.mkdtemp(prefix="shared-tiny-"))
        else:
            layout = Layout.of_project(project, dataset, ner_dataset, tagger_dataset, trf_pipeline)
        if not layout.test.exists():
            raise typer.BadParameter(f"No test split at {layout.test}: run the project's convert for {dataset}")
        rows, unreachable = build_rows(layout, chosen, [p for p, on in (("int8", int8), ("bf16", bf16)) if on])
        reference_nlp = rows[0].stages[0].nlp
        test = load_examples(reference_nlp, layout.test)
        print(f"{len(rows)} rows, {len(test)} test docs, {torch.get_num_threads()} threads", flush=True)
        for line in unreachable:
            print(f"left out: {line}", flush=True)
        reference_flops = 0
        pos_metric = tagger_metric(layout.test.parent)
        for row in rows:
            docs, row.result = score_system(row, test, pos_metric)
            if row is rows[0]:
                reference_flops = shared_full_flops(docs, reference_nlp)
            row.result["flops_speedup"] = round(reference_flops / row.result["flops"], 3)
            print(f"[score] {row.key:28s} NER F1 {row.result['ner_f']:.2f}  POS {row.result['pos_acc']:.2f}  "
                  f"FLOPs x{row.result['flops_speedup']:.2f}", flush=True)
        texts = [eg.reference.text for eg in (test[:timing_docs] if timing_docs else test)]
        n_words = sum(len(doc) for doc in reference_nlp.tokenizer.pipe(texts))
        print(f"[time] {len(rows)} rows, {len(texts)} docs ({n_words} words), batch sizes {sizes}, {repeats} repetitions", flush=True)
        time_rows(rows, texts, n_words, sizes, repeats)
        training = RESULTS / f"spacy_trf_{dataset}_training.json"
        report = {
            "dataset": dataset,
            "split": "test",
            "test_docs": len(test),
            "metrics": {"ner": NER_METRIC, "pos": pos_metric},
            "flops_reference": "one full-depth pass of the shared encoder with both heads: sum of full_flops of the "
                               "shared tokee_transformer record over the test docs",
            "reference_flops": reference_flops,
            "unreachable": unreachable,
            "rows": [row.as_json() for row in rows],
            "commands": {
                "benchmark": command,
                "spacy_trf_training": json.loads(training.read_text(encoding="utf8")).get("command") if training.exists() else None,
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, spaCy {spacy.__version__}",
            "threads": torch.get_num_threads(),
            "timing_docs": len(texts),
            "timing_words": n_words,
            "batch_sizes": sizes,
            "repeats": repeats,
            "seconds": round(time.time() - started),
        }
        write_outputs(report, (output_dir or RESULTS) / (name or f"shared_{dataset}"))


if __name__ == "__main__":
    typer.run(main)
