"""Convert one dataset into corpus/<dataset>/{train,dev,test}.spacy plus meta.json.

The dataset name picks the reader, the files, the task (which component and
config train on it), the language and the metric, so project.yml stays the
same for every corpus. Public corpora are read from --data-dir; the demo
corpus ships in assets/.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import typer
from spacy.tokens import Doc, DocBin

from convert import READERS, summarize


@dataclass
class Dataset:
    """task: "ner" | "tagger" | "segmenter"; files: split -> (reader, path
    relative to its root); hold_out: docs moved from the end of train to dev when
    the corpus has no usable dev split (or dev is used as the test split)."""

    task: str
    lang: str
    metric: str
    files: Dict[str, tuple]
    in_assets: bool = False
    hold_out: int = 0
    note: str = ""


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
    "ud_en_ewt": Dataset(
        "tagger", "en", "pos_acc",
        {s: ("conllu_pos", f"ud_en_ewt/en_ewt-ud-{s}.conllu") for s in ("train", "dev", "test")},
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


def read(dataset: Dataset, split: str, root: Path) -> Optional[List[Doc]]:
    if split not in dataset.files:
        return None
    reader_name, relative = dataset.files[split]
    path = root / relative
    if not path.exists():
        raise typer.BadParameter(f"Missing {path}: point --data-dir at a copy of the corpus (see project.yml assets)")
    reader, _ = READERS[reader_name]
    return reader(path, dataset.lang)


def main(
    name: str = typer.Argument(..., help=f"Dataset: {', '.join(DATASETS)}"),
    output_dir: Path = typer.Argument(..., help="Writes train/dev/test .spacy and meta.json here"),
    data_dir: Path = typer.Option(Path("../../shared/data"), help="Folder with the public corpora"),
    assets_dir: Path = typer.Option(Path("assets"), help="Folder with the embedded demo corpus"),
    limit: int = typer.Option(0, help="Keep only the first N docs of each split (0: all); for quick runs"),
) -> None:
    if name not in DATASETS:
        raise typer.BadParameter(f"Unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    root = assets_dir if dataset.in_assets else data_dir
    splits = {split: read(dataset, split, root) for split in ("train", "dev", "test")}
    if dataset.hold_out:
        train = splits["train"]
        if len(train) <= dataset.hold_out:
            raise typer.BadParameter(f"{name}: train has {len(train)} docs, cannot hold out {dataset.hold_out}")
        splits["train"], splits["dev"] = train[: -dataset.hold_out], train[-dataset.hold_out :]
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        if limit:
            docs = docs[:limit]
        DocBin(docs=docs).to_disk(output_dir / f"{split}.spacy")
        counts = summarize(docs)
        totals = dict(counts.get("totals", {}))
        print(f"{name} {split}: {len(docs)} docs {totals}")
    meta = {"dataset": name, **asdict(dataset)}
    (output_dir / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


if __name__ == "__main__":
    typer.run(main)
