"""The spacy-transformers baseline's training config for a corpus's tag column.

benchmarks/configs/spacy_trf_ner_tagger.cfg tags UPOS with spaCy's
`morphologizer` (it writes token.pos_, scored as `pos_acc`). A corpus whose
tagger column is a tag set of its own (CoNLL-2003's PTB tags, prepare.py's
meta.json says `"tagger": "tag_acc"`) needs spaCy's `tagger` instead, which
writes token.tag_: same listener and the same `spacy.Tagger.v2` softmax, only
the component, its scorer and the score weight change. Building that variant
from the one file keeps the two baselines from drifting apart.

    python benchmarks/spacy_trf_config.py tag_acc training/spacy_trf_x/train.cfg
"""
from pathlib import Path

import typer
from thinc.api import Config

CONFIG = Path(__file__).resolve().parent / "configs" / "spacy_trf_ner_tagger.cfg"
UPOS = "pos_acc"
OWN_TAGS = "tag_acc"


def trf_config(tagger_metric: str = UPOS) -> Config:
    """The baseline config whose tagger writes what `tagger_metric` scores.

    tagger_metric (str): "pos_acc" (UPOS in token.pos_: the file as it is) or
        "tag_acc" (a tag set in token.tag_: spaCy's `tagger`).
    RETURNS (Config): the uninterpolated config (variables such as
        ${paths.backbone} left for `spacy train` overrides).
    """
    config = Config().from_disk(CONFIG, interpolate=False)
    if tagger_metric == UPOS:
        return config
    if tagger_metric != OWN_TAGS:
        raise ValueError(f"No spacy-transformers tagger for the metric {tagger_metric!r}: use {UPOS!r} or {OWN_TAGS!r}")
    components = config["components"]
    morphologizer = components.pop("morphologizer")
    components["tagger"] = {
        "factory": "tagger",
        "label_smoothing": 0.0,
        "neg_prefix": "!",
        "overwrite": False,
        "scorer": {"@scorers": "spacy.tagger_scorer.v1"},
        "model": morphologizer["model"],
    }
    config["nlp"]["pipeline"] = ["tagger" if name == "morphologizer" else name for name in config["nlp"]["pipeline"]]
    weights = config["training"]["score_weights"]
    for key in ("pos_acc", "morph_acc", "morph_per_feat"):
        weights.pop(key, None)
    weights[OWN_TAGS] = 0.5
    return config


def main(
    tagger_metric: str = typer.Argument(..., help="pos_acc (UPOS, spaCy's morphologizer) or tag_acc (token.tag_, spaCy's tagger)"),
    output: Path = typer.Argument(..., help="Where to write the config"),
) -> None:
    """Write the spacy-transformers baseline config for a corpus's tag column."""
    output.parent.mkdir(parents=True, exist_ok=True)
    trf_config(tagger_metric).to_disk(output)
    typer.echo(f"[spacy-trf] config with {'morphologizer' if tagger_metric == UPOS else 'tagger'} -> {output}")


if __name__ == "__main__":
    typer.run(main)
