"""Tiny random BERT-family models and tokenizers, built in memory: fast and offline."""
import string
from pathlib import Path

import pytest
import torch

WORDS = (
    "the a an of to in and is was for on with as by at from new york london paris "
    "john mary smith google apple city company said will be have has it he she they "
    "we you i this that not but are were been one two three"
).split()


def write_vocab(path: Path) -> Path:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + pieces + WORDS
    seen = []
    for item in vocab:
        if item not in seen:
            seen.append(item)
    path.write_text("\n".join(seen) + "\n", encoding="utf8")
    return path


def bert_tokenizer(tmp_path: Path):
    from transformers import BertTokenizerFast

    vocab = write_vocab(Path(tmp_path) / "vocab.txt")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def tiny_config(family: str = "bert", vocab_size: int = 128, layers: int = 4, max_positions: int = 64):
    from transformers import AlbertConfig, BertConfig, RobertaConfig

    common = dict(
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
        return RobertaConfig(pad_token_id=1, **{**common, "max_position_embeddings": max_positions + 2})
    if family == "albert":
        return AlbertConfig(embedding_size=16, **common)
    raise ValueError(family)


def tiny_backbone(family: str = "bert", seed: int = 0, **kwargs):
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(family, **kwargs))
    model.eval()
    return model


def save_tiny_backbone(directory: Path, family: str = "bert", **kwargs) -> Path:
    """Write a tiny model + tokenizer folder, usable as a local backbone name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = bert_tokenizer(directory)
    model = tiny_backbone(family, vocab_size=len(tokenizer), **kwargs)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run faster on one thread; two threads also fight any other
    process on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


NER_DATA = [
    ("John Smith lives in New York .", [(0, 10, "PER"), (20, 28, "LOC")]),
    ("Google is a company in London", [(0, 6, "ORG"), (23, 29, "LOC")]),
    ("Mary said apple will have a new city", [(0, 4, "PER"), (10, 15, "ORG")]),
    ("They were in Paris with John", [(13, 18, "LOC"), (24, 28, "PER")]),
]


def ner_examples(nlp):
    from spacy.training import Example

    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]


def make_ner_nlp(model_dir, steps: int = 0, **config):
    """A blank English pipeline with tokee_ner on a tiny local backbone."""
    import spacy

    nlp = spacy.blank("en")
    model = {"name": str(model_dir), **config.pop("model", {})}
    nlp.add_pipe("tokee_ner", config={"model": model, "learn_rate": 1e-3, "warmup_steps": 0, **config})
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


@pytest.fixture(scope="session")
def trained_ner(tiny_model_dir):
    # Sharp temperatures make the tiny random model confident enough to exit.
    return make_ner_nlp(tiny_model_dir, steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)
