"""Split the last N docs of a DocBin off into a second DocBin (a held-out set).

The demo corpus has no train split, so the workflow trains on UNER dev minus a
held-out tail and chooses exit settings on that tail; test is only reported.
"""
from pathlib import Path

import spacy
import typer
from spacy.tokens import DocBin


def main(
    source: Path = typer.Argument(..., help="Input .spacy file"),
    keep_path: Path = typer.Argument(..., help="Output .spacy for all but the last N docs"),
    held_out_path: Path = typer.Argument(..., help="Output .spacy for the last N docs"),
    n_held_out: int = typer.Option(200, "--n", help="How many docs to hold out"),
) -> None:
    docs = list(DocBin().from_disk(source).get_docs(spacy.blank("xx").vocab))
    if not 0 < n_held_out < len(docs):
        raise typer.BadParameter(f"--n must be between 1 and {len(docs) - 1}")
    for path, part in ((keep_path, docs[:-n_held_out]), (held_out_path, docs[-n_held_out:])):
        path.parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=part).to_disk(path)
        print(f"{path}: {len(part)} docs, {sum(len(d) for d in part)} tokens")


if __name__ == "__main__":
    typer.run(main)
