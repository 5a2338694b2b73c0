"""A character tokenizer: one spaCy token per character, for word segmentation.

`tokee_segmenter` predicts word boundaries between characters, so the
pipeline's tokenizer must hand it characters. Register it in a config with::

    [nlp.tokenizer]
    @tokenizers = "spacy-early-exit.CharacterTokenizer.v1"

A "character" is a Unicode grapheme cluster (what a reader sees as one
character), not a code point: an emoji with a skin-tone modifier or a ZWJ
sequence, a flag, or a letter followed by a combining accent stays one token.
Splitting those would create tokens that no wordpiece covers (the backbone's
tokenizer drops combining marks) and words that cut a symbol in half. Every CJK
character is its own cluster, so for Chinese this is one token per character.

Whitespace follows spaCy's own tokenizer: one ASCII space after a token is that
token's trailing whitespace (``token.whitespace_``); any other whitespace run
(a newline, a tab, a second space, an ideographic space, whitespace at the
start) is one whitespace token. Nothing is dropped: ``doc.text`` is always the
input text.
"""
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Tuple, Union

import regex
import srsly
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import registry
from spacy.vocab import Vocab

# A whitespace run, or else one grapheme cluster (\X). The whitespace branch
# comes first so that a run is never split into clusters.
PIECE = regex.compile(r"\s+|\X")


def split_characters(text: str) -> Tuple[List[str], List[bool]]:
    """Split text into characters (grapheme clusters) and whitespace runs.

    text (str): The input text.
    RETURNS (Tuple[List[str], List[bool]]): the token texts and, per token,
        whether one space follows it; together they rebuild `text` exactly.
    """
    words: List[str] = []
    spaces: List[bool] = []
    for piece in PIECE.findall(text):
        if not piece.isspace():
            words.append(piece)
            spaces.append(False)
            continue
        if words and piece[0] == " " and not words[-1].isspace():
            # One space after a character is its trailing whitespace, as in
            # spaCy's tokenizer; only the rest of the run becomes a token.
            spaces[-1] = True
            piece = piece[1:]
        if piece:
            words.append(piece)
            spaces.append(False)
    return words, spaces


class CharacterTokenizer:
    """Tokenize text into one token per character; see the module docstring.

    vocab (Vocab): the pipeline's vocab.
    """

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab

    def __call__(self, text: str) -> Doc:
        words, spaces = split_characters(text)
        return Doc(self.vocab, words=words, spaces=spaces)

    def pipe(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[Doc]:
        for text in texts:
            yield self(text)

    # The tokenizer has no state: serialization writes an empty record, so that
    # nlp.to_disk / to_bytes and spacy.load work like with any tokenizer.

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        return srsly.msgpack_dumps({})

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "CharacterTokenizer":
        return self

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        srsly.write_json(Path(path), {})

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "CharacterTokenizer":
        return self


@registry.tokenizers("spacy-early-exit.CharacterTokenizer.v1")
def create_character_tokenizer() -> Callable[[Language], CharacterTokenizer]:
    """Registered tokenizer factory: RETURNS a function nlp -> CharacterTokenizer."""

    def make_tokenizer(nlp: Language) -> CharacterTokenizer:
        return CharacterTokenizer(nlp.vocab)

    return make_tokenizer
