"""Convert one dataset into corpus/<dataset>/{train,dev,test}.spacy plus meta.json.

The dataset name picks the reader, the files, the task (which component and
config train on it), the language and the metric, so project.yml stays the
same for every corpus. Public corpora are read from --data-dir; the demo
corpus ships in assets/.

Your own corpus: any other name (e.g. "custom") with --train and --test (and
--dev, or the last 10% of train is held out), --task and --lang. Each file is a
.spacy DocBin or a text format that convert.py reads, picked from its
extension (see FORMAT_OF_EXTENSION) or forced for all three with --format.

A tagger corpus may use any tag set: CoNLL columns (word, tag) or .spacy files
with token.tag_ train the tokee_tagger on token.tag_ (scored as tag_acc); a
UPOS corpus (.conllu, token.pos_, or tags that are all UPOS) trains token.pos_
(pos_acc). meta.json records the choice as "attribute" and "metric".

A line that cannot be read stops the run with one "file:line: what was
expected" line (status 2); --skip-bad-lines skips such lines and counts them.

Two tasks on one corpus (--task ner,tagger) make a corpus for one shared
encoder with an NER and a tagger head: every doc carries doc.ents and tags.
CoNLL-2003 gives its PTB POS column as token.tag_ (tag_acc); uner_ud_en_ewt
(or uner_en_ewt with --task ner,tagger) joins the shipped UNER English-EWT
sentences with the shipped UD English-EWT ones by sent_id (UPOS, pos_acc),
reporting and skipping the sentences that do not join; your own corpus must be
.spacy files with both annotations. meta.json then lists "tasks", each task's
metric in "metrics", and the tagger's "attribute".
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import typer
from spacy.tokens import Doc, DocBin

from convert import READERS, UD_UPOS, BadLines, BadLine, get_vocab, join_report, read_iob2_conllu, read_or_exit, summarize

# How a project user asks for --skip-bad-lines, named in the hint of a bad line.
SKIP_OPTION = "--vars.skip_bad_lines true, or prepare.py --skip-bad-lines true"
# The spellings of --skip-bad-lines' value: project.yml hands the var over as text.
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


@dataclass
class Dataset:
    """task: "ner" | "tagger" | "segmenter", or "ner,tagger" for one shared
    encoder with two heads; metric: the task's score key (comma separated, one
    per task, for two tasks); files: split -> (reader, path relative to its
    root), or (JOIN_READER, NER path, POS path); hold_out: docs moved from the
    end of train to dev when the corpus has no usable dev split (or dev is used
    as the test split); attribute: what a tagger learns, "pos" (UPOS) or "tag"
    (any tag set), None without a tagger (a custom tagger corpus gets it from
    its annotation)."""

    task: str
    lang: str
    metric: str
    files: Dict[str, tuple]
    in_assets: bool = False
    hold_out: int = 0
    note: str = ""
    attribute: Optional[str] = None

    @property
    def tasks(self) -> List[str]:
        """The tasks, one per head: ["ner"], or ["ner", "tagger"] for a shared encoder."""
        return self.task.split(",")


# The reader of a split that joins two files by sent_id: (JOIN_READER, NER file, POS file).
JOIN_READER = "iob2+conllu_pos"

DATASETS: Dict[str, Dataset] = {
    "uner_en_ewt": Dataset(
        "ner", "en", "ents_f",
        {"train": ("iob2", "uner_en_ewt/en_ewt-ud-dev.iob2"), "test": ("iob2", "uner_en_ewt/en_ewt-ud-test.iob2")},
        in_assets=True, hold_out=200,
        note="embedded demo: trains on UNER dev minus its last 200 sentences, which serve as dev",
    ),
    "conll2003": Dataset(
        "ner", "en", "ents_f",
        {s: ("conll2003", f"conll2003/{s}.txt") for s in ("train", "dev", "test")},
    ),
    # The NER demo's sentences with UD English-EWT's UPOS besides (both shipped):
    # the same train/dev split, for one encoder with an NER and a tagger head.
    "uner_ud_en_ewt": Dataset(
        "ner,tagger", "en", "ents_f,pos_acc",
        {
            "train": (JOIN_READER, "uner_en_ewt/en_ewt-ud-dev.iob2", "ud_en_ewt/en_ewt-ud-dev.conllu"),
            "test": (JOIN_READER, "uner_en_ewt/en_ewt-ud-test.iob2", "ud_en_ewt/en_ewt-ud-test.conllu"),
        },
        in_assets=True, hold_out=200, attribute="pos",
        note="two-task demo: UNER English-EWT entities and UD English-EWT UPOS joined by sent_id; "
        "trains on dev minus its last 200 sentences, which serve as dev",
    ),
    "ud_en_ewt": Dataset(
        "tagger", "en", "pos_acc",
        {s: ("conllu_pos", f"ud_en_ewt/en_ewt-ud-{s}.conllu") for s in ("train", "dev", "test")},
        attribute="pos",
    ),
    "ud_zh_gsd_seg": Dataset(
        "segmenter", "zh", "token_f",
        {
            "train": ("conllu_seg", "ud_zh_gsd/train_segmentation_from_UNER/zh_gsdsimp-ud-train.iob2"),
            "dev": ("conllu_seg", "ud_zh_gsd/zh_gsdsimp-ud-dev.conllu"),
            "test": ("conllu_seg", "ud_zh_gsd/zh_gsdsimp-ud-test.conllu"),
        },
        note="train segmentation from UNER Chinese-GSDSimp (the UD train file is not available)",
    ),
    "weibo": Dataset(
        "ner", "zh", "ents_f",
        {s: ("weibo", f"weibo_ner/{s}.txt") for s in ("train", "dev", "test")},
    ),
    "cluener": Dataset(
        "ner", "zh", "ents_f",
        {"train": ("cluener", "cluener/train.json"), "test": ("cluener", "cluener/dev.json")},
        hold_out=1000,
        note="CLUENER's test has no labels: its dev is the test split, 1000 train docs are held out as dev",
    ),
}


# The two-task variant of a bundled dataset, for --task ner,tagger.
TWO_TASK_VARIANTS: Dict[str, Dataset] = {
    "uner_en_ewt": DATASETS["uner_ud_en_ewt"],
    # CoNLL-2003's second column is PTB POS: token.tag_, scored as tag_acc.
    "conll2003": Dataset(
        "ner,tagger", "en", "ents_f,tag_acc",
        {s: ("conll2003_tagged", f"conll2003/{s}.txt") for s in ("train", "dev", "test")},
        attribute="tag", note="NER and the PTB POS column on the same sentences",
    ),
}
METRICS = {"ner": "ents_f", "tagger": "pos_acc", "segmenter": "token_f"}
# The task sets one shared encoder can serve, in head order (the pipeline order of
# project/configs/shared.cfg).
SHARED_TASKS = ("ner", "tagger")
# A file's extension -> its format, per task; "spacy" is a DocBin for any task.
FORMAT_OF_EXTENSION: Dict[str, Dict[str, str]] = {
    ".spacy": {"ner": "spacy", "tagger": "spacy", "segmenter": "spacy", "ner,tagger": "spacy"},
    ".iob2": {"ner": "iob2", "segmenter": "conllu_seg"},
    ".conllu": {"tagger": "conllu_pos", "segmenter": "conllu_seg"},
    ".jsonl": {"ner": "jsonl"},
    ".json": {"ner": "jsonl"},
    # CoNLL columns: word first, then an IOB tag (ner) or a tag of any tag set (tagger).
    **{ext: {"ner": "conll", "tagger": "conll_tag"} for ext in (".conll", ".txt", ".tsv", ".bio", ".iob")},
}
# What each format annotates; a .spacy DocBin may carry any of them.
TASKS_OF_FORMAT = {
    "spacy": ("ner", "tagger", "segmenter", "ner,tagger"),
    "conll2003_tagged": ("ner,tagger",),
    "conllu_pos": ("tagger",),
    "conll_tag": ("tagger",),
    "conllu_seg": ("segmenter",),
    **{fmt: ("ner",) for fmt in ("conll", "conll2003", "iob2", "jsonl", "weibo", "cluener")},
}
# Held-out share of train when a custom corpus has no dev file.
CUSTOM_DEV_SHARE = 0.1


def read_docbin(path: Path, lang: str) -> List[Doc]:
    """The docs of a .spacy DocBin.

    path (Path): The DocBin file.
    lang (str): The language of the vocab the docs are read into.
    RETURNS (List[Doc]): The docs with their annotation.
    """
    return list(DocBin().from_disk(path).get_docs(get_vocab(lang)))


def read(dataset: Dataset, split: str, root: Path, bad_lines: Optional[BadLines] = None) -> Optional[List[Doc]]:
    """Read one split of a dataset, or None when the dataset has no such file.

    dataset (Dataset): The dataset.
    split (str): "train", "dev" or "test".
    root (Path): The folder the dataset's paths are relative to.
    bad_lines (Optional[BadLines]): Skip and count unreadable lines, or (None) stop
        at the first with one line naming it (status 2).
    RETURNS (Optional[List[Doc]]): One Doc per sentence.
    """
    if split not in dataset.files:
        return None
    reader_name, *relatives = dataset.files[split]
    paths = [root / relative for relative in relatives]
    for path in paths:
        if not path.exists():
            bundled = bool(dataset_name(dataset))
            hint = "point --data-dir at a copy of the corpus (see project.yml assets)" if bundled else "check the path (a relative path starts from the project folder)"
            raise typer.BadParameter(f"Missing {path}: {hint}")
    if reader_name == JOIN_READER:
        return read_joined(paths[0], paths[1], dataset.lang, bad_lines or BadLines())
    if reader_name == "spacy":
        return read_docbin(paths[0], dataset.lang)
    reader, _ = READERS[reader_name]
    return read_or_exit(reader, paths[0], dataset.lang, bad_lines or BadLines(), SKIP_OPTION)


def read_joined(ner_path: Path, pos_path: Path, lang: str, bad_lines: BadLines) -> List[Doc]:
    """The docs of an NER file and a POS file joined by sent_id; prints the sentences left out.

    ner_path (Path): The UNER .iob2 file.
    pos_path (Path): The UD CoNLL-U file of the same sentences.
    lang (str): The language of the vocab.
    bad_lines (BadLines): Skip and count unreadable lines, or stop at the first (status 2).
    RETURNS (List[Doc]): Docs with doc.ents and token.pos_, in the NER file's order.
    """
    try:
        docs, skipped = read_iob2_conllu(ner_path, pos_path, lang, bad_lines=bad_lines)
    except BadLine as err:
        hint = f" (skip such lines with {SKIP_OPTION})" if err.skippable else ""
        typer.echo(f"{err}{hint}", err=True)
        raise typer.Exit(2) from None
    if skipped:
        print(f"{ner_path.name} + {pos_path.name}: {len(docs)} sentences joined, {len(skipped)} left out (they do not join by sent_id)")
        for line in join_report(skipped):
            print(line)
    return docs


def dataset_name(dataset: Dataset) -> str:
    """The registered name of a dataset (or of the bundled dataset it is the two-task variant of), or "" for a custom one."""
    known = [*DATASETS.items(), *TWO_TASK_VARIANTS.items()]
    return next((name for name, bundled in known if bundled is dataset), "")


def parse_tasks(task: str) -> str:
    """--task as a Dataset's task: one task, or "ner,tagger" (in head order) for a shared encoder.

    task (str): "ner", "tagger", "segmenter", or two of them comma separated.
    RETURNS (str): The task.
    RAISES (typer.BadParameter): An unknown task, or a pair no shared encoder serves.
    """
    names = [name.strip() for name in task.split(",") if name.strip()]
    if len(names) == 1 and names[0] in METRICS:
        return names[0]
    if sorted(names) == sorted(SHARED_TASKS):
        return ",".join(SHARED_TASKS)
    raise typer.BadParameter(
        f"--task must be one of {', '.join(METRICS)}, or {','.join(SHARED_TASKS)} "
        f"(one shared encoder, two heads); got {task!r}"
    )


def task_metrics(dataset: Dataset) -> Dict[str, str]:
    """Each task's score key, e.g. {"ner": "ents_f", "tagger": "pos_acc"}.

    dataset (Dataset): The dataset; its metric holds one key per task, comma separated.
    RETURNS (Dict[str, str]): task -> metric, in head order.
    """
    return dict(zip(dataset.tasks, dataset.metric.split(",")))


def check_entities(splits: Dict[str, Optional[List[Doc]]]) -> None:
    """Require NER annotation on every doc of a two-task corpus.

    A doc without it would train the tagger head only, silently; a corpus meant
    for both heads that lacks entities is far more likely a wrong file.

    splits (Dict[str, Optional[List[Doc]]]): split -> docs.
    RAISES (typer.BadParameter): A split has a doc without entity annotation.
    """
    for split, docs in splits.items():
        if docs and not all(doc.has_annotation("ENT_IOB") for doc in docs if len(doc)):
            raise typer.BadParameter(
                f"The {split} file has docs without entity annotation: --task ner,tagger needs doc.ents "
                "(an empty doc.ents for a sentence without entities) and tags on every doc"
            )


def bundled_dataset(name: str, task: str) -> Dataset:
    """A bundled dataset, or its two-task variant when --task names two tasks.

    name (str): A DATASETS name.
    task (str): The parsed --task. One task is ignored: a bundled dataset knows its own.
    RETURNS (Dataset): The dataset.
    RAISES (typer.BadParameter): Two tasks for a dataset without them both.
    """
    dataset = DATASETS[name]
    if "," not in task or dataset.task == task:
        return dataset
    if name not in TWO_TASK_VARIANTS:
        variants = ", ".join(f"{known} ({TWO_TASK_VARIANTS[known].metric})" for known in TWO_TASK_VARIANTS)
        raise typer.BadParameter(
            f"{name} has no {task} annotation; --task {task} runs on {variants}, uner_ud_en_ewt, "
            "or your own .spacy files carrying both"
        )
    return TWO_TASK_VARIANTS[name]


def format_for(path: Path, task: str, fmt: str) -> str:
    """The reader for one custom file: --format, or the one its extension implies for the task.

    path (Path): The file.
    task (str): "ner", "tagger" or "segmenter".
    fmt (str): "auto", "spacy" or a convert.py format.
    RETURNS (str): The format name.
    """
    if fmt == "auto":
        by_task = FORMAT_OF_EXTENSION.get(path.suffix.lower())
        if by_task is None:
            known = ", ".join(sorted(FORMAT_OF_EXTENSION))
            raise typer.BadParameter(f"{path}: cannot tell the format from {path.suffix!r} (known: {known}); set --format")
        if "," in task and task not in by_task:
            raise typer.BadParameter(
                f"{path}: --task {task} needs both annotations in one file: a .spacy DocBin "
                "(doc.ents and token.tag_ or token.pos_), or CoNLL-2003 columns with --format conll2003_tagged"
            )
        if task not in by_task:
            # The task, not the format, is what is off: the extension already says what the file holds.
            tasks = " or ".join(by_task)
            raise typer.BadParameter(
                f"{path}: a {path.suffix} file has no {task} annotation this project reads; "
                f"it holds {tasks} annotation: set --vars.task {tasks} (prepare.py: --task)"
            )
        return by_task[task]
    if fmt not in TASKS_OF_FORMAT:
        raise typer.BadParameter(f"Unknown --format {fmt!r}; choose from auto, {', '.join(TASKS_OF_FORMAT)}")
    if task not in TASKS_OF_FORMAT[fmt]:
        two = [known for known, tasks in TASKS_OF_FORMAT.items() if task in tasks]
        hint = f" (formats with both: {', '.join(two)})" if "," in task else ""
        raise typer.BadParameter(f"--format {fmt} holds {'/'.join(TASKS_OF_FORMAT[fmt])} annotation, not {task}{hint}")
    return fmt


def tagger_attribute(splits: Dict[str, Optional[List[Doc]]]) -> str:
    """What a custom tagger corpus trains: "pos" for UPOS, "tag" for any other tag set.

    UPOS means token.pos_ on every doc (CoNLL-U, a .spacy file with POS), or
    token.tag_ values that are all UD UPOS tags, which are then copied to
    token.pos_ so the corpus trains and scores like a CoNLL-U one.

    splits (Dict[str, Optional[List[Doc]]]): split -> docs (changed in place for UPOS tags).
    RETURNS (str): "pos" or "tag".
    RAISES (typer.BadParameter): A split has neither annotation on every doc.
    """
    docs = {split: [doc for doc in split_docs if len(doc)] for split, split_docs in splits.items() if split_docs}
    if all(doc.has_annotation("POS") for split_docs in docs.values() for doc in split_docs):
        return "pos"
    for split, split_docs in docs.items():
        if not all(doc.has_annotation("TAG") for doc in split_docs):
            raise typer.BadParameter(
                f"The {split} file has docs without tags: a tagger corpus needs token.tag_ (any tag set) "
                "or token.pos_ (UPOS) on every doc, the same in every file"
            )
    tags = {token.tag_ for split_docs in docs.values() for doc in split_docs for token in doc if token.tag_}
    if not tags <= UD_UPOS:
        return "tag"
    for split_docs in docs.values():
        for doc in split_docs:
            for token in doc:
                token.pos_ = token.tag_
    return "pos"


def custom_dataset(task: str, lang: str, files: Dict[str, Path], fmt: str) -> Dataset:
    """A Dataset for the user's own train/dev/test files.

    task (str): "ner", "tagger", "segmenter", or "ner,tagger" (one shared encoder).
    lang (str): A spaCy language code.
    files (Dict[str, Path]): split -> file; "dev" may be missing.
    fmt (str): "auto" or a format name for every file.
    RETURNS (Dataset): The dataset; without dev, the end of train is held out (see main).
    """
    task = parse_tasks(task)
    try:
        get_vocab(lang)
    except ImportError:
        raise typer.BadParameter(f"--lang {lang!r} is not a spaCy language code") from None
    for split in ("train", "test"):
        if split not in files:
            raise typer.BadParameter(f"Your own corpus needs --{split} (a file path)")
    table = {split: (format_for(path, task, fmt), str(path)) for split, path in files.items()}
    note = "your own corpus" + ("" if "dev" in files else f"; dev = the last {CUSTOM_DEV_SHARE:.0%} of train")
    metric = ",".join(METRICS[name] for name in task.split(","))
    return Dataset(task, lang, metric, table, note=note)


def parse_switch(value: str, option: str) -> bool:
    """An on/off option's value: true/false (yes/no, 1/0), any case.

    value (str): The text given.
    option (str): The option, for the error.
    RETURNS (bool): The switch.
    RAISES (typer.BadParameter): Another value.
    """
    word = value.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise typer.BadParameter(f"{option} takes true or false; got {value!r}")
    return word in TRUE_WORDS


def main(
    name: str = typer.Argument(..., help=f"Dataset: {', '.join(DATASETS)}"),
    output_dir: Path = typer.Argument(..., help="Writes train/dev/test .spacy and meta.json here"),
    data_dir: Path = typer.Option(Path("../../shared/data"), help="Folder with the public corpora"),
    assets_dir: Path = typer.Option(Path("assets"), help="Folder with the embedded demo corpus"),
    limit: int = typer.Option(0, help="Keep only the first N docs of each split (0: all); for quick runs"),
    train: str = typer.Option("", help="Your own corpus: the train file (.spacy, .conll/.txt, .iob2, .conllu, .jsonl)"),
    dev: str = typer.Option("", help="Your own corpus: the dev file (empty: the last 10% of train)"),
    test: str = typer.Option("", help="Your own corpus: the test file"),
    task: str = typer.Option("ner", help="Your own corpus: ner, tagger or segmenter; ner,tagger (one shared encoder, two heads) also for conll2003 and uner_en_ewt"),
    lang: str = typer.Option("en", help="Your own corpus: spaCy language code"),
    fmt: str = typer.Option("auto", "--format", help="Your own corpus: auto (from each file's extension), spacy, or a convert.py format"),
    # A value, not a flag: project.yml passes ${vars.skip_bad_lines} either way.
    skip_bad_lines: str = typer.Option("false", "--skip-bad-lines", metavar="true|false", help="true: skip lines that cannot be read (a count per file is printed) instead of stopping at the first"),
) -> None:
    files = {split: Path(path) for split, path in (("train", train), ("dev", dev), ("test", test)) if path}
    task = parse_tasks(task)
    if name in DATASETS:
        if files:
            raise typer.BadParameter(f"{name} is a bundled dataset; --train/--dev/--test need another name (e.g. custom)")
        dataset = bundled_dataset(name, task)
        root = assets_dir if dataset.in_assets else data_dir
    elif files:
        dataset = custom_dataset(task, lang, files, fmt)
        root = Path(".")
    else:
        raise typer.BadParameter(f"Unknown dataset {name!r}; choose from {', '.join(DATASETS)}, or give --train/--test for your own corpus")
    bad_lines = BadLines(skip=parse_switch(skip_bad_lines, "--skip-bad-lines"))
    splits = {split: read(dataset, split, root, bad_lines) for split in ("train", "dev", "test")}
    for line in bad_lines.summary():
        print(line)
    if len(dataset.tasks) > 1 and "ner" in dataset.tasks:
        check_entities(splits)
    if "tagger" in dataset.tasks and dataset.attribute is None:
        dataset.attribute = tagger_attribute(splits)
        metrics = {**task_metrics(dataset), "tagger": f"{dataset.attribute}_acc"}
        dataset.metric = ",".join(metrics.values())
        kind = "UPOS" if dataset.attribute == "pos" else "its own tag set"
        print(f"{name}: a tagger corpus with {kind}: trains token.{dataset.attribute}_, scored as {dataset.attribute}_acc")
    if splits["dev"] is None and not dataset.hold_out:
        dataset.hold_out = max(1, int(len(splits["train"]) * CUSTOM_DEV_SHARE))
    if dataset.hold_out:
        train_docs = splits["train"]
        if len(train_docs) <= dataset.hold_out:
            raise typer.BadParameter(f"{name}: train has {len(train_docs)} docs, cannot hold out {dataset.hold_out}")
        splits["train"], splits["dev"] = train_docs[: -dataset.hold_out], train_docs[-dataset.hold_out :]
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        if limit:
            docs = docs[:limit]
        DocBin(docs=docs).to_disk(output_dir / f"{split}.spacy")
        counts = summarize(docs)
        totals = dict(counts.get("totals", {}))
        print(f"{name} {split}: {len(docs)} docs {totals}")
    # "tasks" and "metrics" (one per head) say the same as "task" and "metric" in
    # lists, so a reader need not split the two-task strings.
    meta = {"dataset": name, **asdict(dataset), "tasks": dataset.tasks, "metrics": task_metrics(dataset)}
    (output_dir / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


if __name__ == "__main__":
    typer.run(main)
