"""Gold examples from a `.spacy` DocBin: the one reader every tool and benchmark uses."""
from pathlib import Path
from typing import Any, List, Sequence, Union

from spacy.language import Language
from spacy.tokens import DocBin
from spacy.training import Example


class DataFileError(ValueError):
    """A data file that is missing or is not a DocBin; the message names the path."""


def spread_sample(items: Sequence[Any], n: int) -> List[Any]:
    """`n` items evenly spaced through `items` (all of them when n is 0 or too large).

    Corpora are ordered by document, so the first N items would be a few
    articles; an even spread is a fairer subset for tuning and timing.
    """
    if not n or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def load_examples(nlp: Language, path: Union[str, Path], limit: int = 0, spread: bool = False) -> List[Example]:
    """Examples pairing each gold doc of a DocBin with the pipeline's own tokenization.

    nlp (Language): the pipeline whose tokenizer makes the predicted docs.
    path (Union[str, Path]): a `.spacy` file.
    limit (int): keep at most this many docs; 0 = all.
    spread (bool): with a limit, take docs evenly spaced through the file
        instead of the first ones.
    RETURNS (List[Example]): one example per kept doc, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"No such data file: {path}")
    try:
        refs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    except Exception as err:  # msgpack/zlib errors say nothing about the path
        raise DataFileError(f"{path} is not a spaCy DocBin (.spacy) file: {type(err).__name__}: {err}") from err
    refs = spread_sample(refs, limit) if spread else refs[:limit] if limit else refs
    return [Example(nlp.make_doc(ref.text), ref) for ref in refs]
