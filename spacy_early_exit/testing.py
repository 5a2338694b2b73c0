"""Tiny random BERT-family models and a toy NER pipeline, built in memory.

For tests and benchmarks that need a real `tokee_ner` pipeline but not a real
model: everything here is random, small (32 hidden units, 4 layers) and
offline, so a pipeline trains a few steps in about a second on one CPU thread.

The module imports nothing heavy at import time (torch, transformers and
spaCy are imported inside the functions), so `import spacy_early_exit.testing`
stays cheap for callers that only want `NER_DATA`.
"""
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple, Union

if TYPE_CHECKING:  # only for the annotations: the real imports are lazy
    from spacy.language import Language
    from spacy.training import Example
    from transformers import BertTokenizerFast, PretrainedConfig, PreTrainedModel

PathLike = Union[str, Path]

# Whole words the tiny vocabulary knows, so that the toy sentences split into
# words rather than single characters; everything else falls back to
# characters and "##" continuation pieces.
WORDS: Tuple[str, ...] = tuple(
    (
        "the a an of to in and is was for on with as by at from new york london paris "
        "john mary smith google apple city company said will be have has it he she they "
        "we you i this that not but are were been one two three"
    ).split()
)

# Four sentences with character-offset entities: enough for a pipeline to see
# every label at initialize and to overfit a little in a few updates.
NER_DATA: List[Tuple[str, List[Tuple[int, int, str]]]] = [
    ("John Smith lives in New York .", [(0, 10, "PER"), (20, 28, "LOC")]),
    ("Google is a company in London", [(0, 6, "ORG"), (23, 29, "LOC")]),
    ("Mary said apple will have a new city", [(0, 4, "PER"), (10, 15, "ORG")]),
    ("They were in Paris with John", [(13, 18, "LOC"), (24, 28, "PER")]),
]

# Fine-tuning settings for the toy pipeline: a high rate because there are
# only a handful of updates, and no warm-up, which would spend them all at a
# near-zero rate.
TINY_FINE_TUNING: Dict[str, Any] = {"learn_rate": 1e-3, "warmup_steps": 0}


def write_vocab(path: PathLike) -> Path:
    """Write a WordPiece vocabulary: special tokens, characters, pieces, `WORDS`.

    path (PathLike): the `vocab.txt` file to write.
    RETURNS (Path): the written file.
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + pieces + list(WORDS)
    # dict keeps the first occurrence in order: some words are single letters
    # ("a", "i") that are already in `chars`, and a vocab line must be unique.
    unique = list(dict.fromkeys(vocab))
    path = Path(path)
    path.write_text("\n".join(unique) + "\n", encoding="utf8")
    return path


def bert_tokenizer(directory: PathLike) -> "BertTokenizerFast":
    """A lower-casing fast WordPiece tokenizer over `write_vocab`'s vocabulary.

    directory (PathLike): an existing folder; `vocab.txt` is written into it.
    RETURNS (BertTokenizerFast): the tokenizer.
    """
    from transformers import BertTokenizerFast

    vocab = write_vocab(Path(directory) / "vocab.txt")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def tiny_config(
    family: str = "bert", vocab_size: int = 128, layers: int = 4, max_positions: int = 64
) -> "PretrainedConfig":
    """A Hugging Face config for a 32-unit, 4-head model of one family.

    family (str): "bert", "roberta" or "albert".
    vocab_size (int): rows of the word embedding table.
    layers (int): encoder layers (the pipe gets one off-ramp per layer).
    max_positions (int): the longest input, in wordpieces.
    RETURNS (PretrainedConfig): the config.
    """
    from transformers import AlbertConfig, BertConfig, RobertaConfig

    common: Dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    if family == "bert":
        return BertConfig(**common)
    if family == "roberta":
        # RoBERTa numbers positions from pad_token_id + 1, so two positions
        # are never used by tokens; add them to keep `max_positions` usable.
        return RobertaConfig(pad_token_id=1, **{**common, "max_position_embeddings": max_positions + 2})
    if family == "albert":
        return AlbertConfig(embedding_size=16, **common)
    raise ValueError(f"Unknown model family {family!r}; expected 'bert', 'roberta' or 'albert'")


def tiny_backbone(family: str = "bert", seed: int = 0, **kwargs: Any) -> "PreTrainedModel":
    """A randomly initialized tiny model in eval mode.

    family (str): "bert", "roberta" or "albert".
    seed (int): torch's seed for the random weights, so that two calls with
        the same arguments build the same model.
    kwargs (Any): more `tiny_config` arguments (vocab_size, layers, max_positions).
    RETURNS (PreTrainedModel): the model.
    """
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(family, **kwargs))
    model.eval()
    return model


def save_tiny_backbone(directory: PathLike, family: str = "bert", **kwargs: Any) -> Path:
    """Write a tiny model and its tokenizer to a folder usable as a backbone name.

    directory (PathLike): the folder; created if missing.
    family (str): "bert", "roberta" or "albert".
    kwargs (Any): more `tiny_backbone` arguments (seed, layers, max_positions).
    RETURNS (Path): the folder, to pass as the component's `model.name`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = bert_tokenizer(directory)
    model = tiny_backbone(family, vocab_size=len(tokenizer), **kwargs)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def ner_examples(nlp: "Language") -> List["Example"]:
    """`NER_DATA` as training examples, tokenized by the pipeline.

    nlp (Language): the pipeline whose tokenizer makes the predicted docs.
    RETURNS (List[Example]): one example per sentence.
    """
    from spacy.training import Example

    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]


def make_ner_nlp(model_dir: PathLike, steps: int = 0, seed: int = 0, **config: Any) -> "Language":
    """A blank English pipeline with `tokee_ner` on a local backbone, initialized on `NER_DATA`.

    model_dir (PathLike): a backbone folder, e.g. from `save_tiny_backbone`.
    steps (int): training updates on `NER_DATA` after initialize.
    seed (int): the random seed set before initialize, so that the same
        arguments build the same model whichever tests ran before.
    config (Any): more component settings. `model` and `fine_tuning` are
        merged into the defaults here (the backbone name and
        `TINY_FINE_TUNING`) rather than replacing them, so a test can change
        one field, e.g. `fine_tuning={"backbone_lr_factor": 0.0}`.
    RETURNS (Language): the pipeline.
    """
    import spacy

    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = {"name": str(model_dir), **config.pop("model", {})}
    fine_tuning = {**TINY_FINE_TUNING, **config.pop("fine_tuning", {})}
    nlp.add_pipe("tokee_ner", config={"model": model, "fine_tuning": fine_tuning, **config})
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


# Penn tags of NER_DATA's tokens, so that a tagger can train beside the NER.
NER_TAGS: List[str] = [
    "NNP NNP VBZ IN NNP NNP .",
    "NNP VBZ DT NN IN NNP",
    "NNP VBD NN MD VB DT JJ NN",
    "PRP VBD IN NNP IN NNP",
]
LISTENER: Dict[str, Any] = {"@architectures": "spacy-early-exit.EarlyExitListener.v1", "upstream": "*"}


def shared_examples(nlp: "Language", entities: bool = True, tags: bool = True) -> List["Example"]:
    """`NER_DATA` with entities and Penn tags (either may be left out: no gold, no loss)."""
    from spacy.training import Example

    examples = []
    for (text, ents), tag_line in zip(NER_DATA, NER_TAGS):
        gold: Dict[str, Any] = {}
        if entities:
            gold["entities"] = ents
        if tags:
            gold["tags"] = tag_line.split()
        examples.append(Example.from_dict(nlp.make_doc(text), gold))
    return examples


def make_shared_nlp(
    model_dir: PathLike, heads: Tuple[str, ...] = ("tokee_ner", "tokee_tagger"), steps: int = 0, seed: int = 0,
    **config: Any
) -> "Language":
    """A blank English pipeline: `tokee_transformer` on a local backbone and
    listening `heads`, initialized on `shared_examples`.

    model_dir (PathLike): a backbone folder, e.g. from `save_tiny_backbone`.
    heads (Tuple[str, ...]): the listening task factories, in pipeline order.
    steps (int): training updates after initialize.
    seed (int): the random seed set before initialize (as in `make_ner_nlp`).
    config (Any): more `tokee_transformer` settings (`model` and
        `fine_tuning` merged into the defaults, as in `make_ner_nlp`).
    RETURNS (Language): the pipeline.
    """
    import spacy

    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = {"name": str(model_dir), **config.pop("model", {})}
    fine_tuning = {**TINY_FINE_TUNING, **config.pop("fine_tuning", {})}
    nlp.add_pipe("tokee_transformer", config={"model": model, "fine_tuning": fine_tuning, **config})
    for head in heads:
        nlp.add_pipe(head, config={"model": dict(LISTENER)})
    examples = shared_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp
