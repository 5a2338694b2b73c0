"""Shared by test_annotate.py and test_distributed.py: a saved tiny pipeline and mixed texts."""
import shutil
from pathlib import Path
from typing import List

from conftest import NER_DATA, make_ner_nlp, save_tiny_backbone

LONG_TEXT = " ".join(["John Smith lives in New York and works for Google ."] * 12)  # ~130 tokens; the limit is 64
ODD_TEXTS = [
    "",
    "emoji 😀🎉 and 👍🏽 in Paris",
    "   ",
    "a line\u2028with a line separator and \x0b a vertical tab",
    "مرحبا John שלום",
    "北京 and London",
    LONG_TEXT,
    "\t tabs \t",
]


def save_ner_pipeline(directory: Path) -> Path:
    """A tiny trained tokee_ner pipeline on disk (its backbone folder removed:
    a saved pipeline must not need it)."""
    directory = Path(directory)
    backbone = save_tiny_backbone(directory / "backbone")
    nlp = make_ner_nlp(backbone, steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)
    nlp.to_disk(directory / "pipeline")
    shutil.rmtree(backbone)
    return directory / "pipeline"


def mixed_texts(n: int) -> List[str]:
    """n documents for .txt input: the NER sentences and the odd ones, in turn."""
    pool = [text for text, _ in NER_DATA] + ODD_TEXTS
    texts = []
    for i in range(n):
        text = pool[(i * 7) % len(pool)]
        texts.append(f"{text} {i}" if text and i % 3 == 0 else text)  # numbered, so order shows
    return texts


def write_lines(path: Path, lines: List[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf8")
    return path
