"""spaCy tokens <-> wordpiece sequences, with windows for long documents.

A document becomes one or more encoder rows: ``[CLS] pieces [SEP]`` (whatever
specials the tokenizer adds). A document longer than the position limit is cut
into overlapping windows; each token is read from the window in which its
first piece sits farthest from a cut, so no token is dropped and none is read
next to an artificial edge when a better window exists.

Names, here and in the encoder: a *token* is a spaCy token; a *piece* is a
wordpiece of the backbone's tokenizer; a *word* is a token that has pieces, as
the encoder sees it: one slot of a row, scored at its first piece. Tokens
without pieces (whitespace) have no word and are not scored.
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from spacy.attrs import IDX, LENGTH

from ..encoder.model import EncoderInput


@dataclass
class SequenceRow:
    """One encoder row.

    ids (numpy.ndarray): wordpiece ids with specials.
    word_cols (numpy.ndarray): column of each word's first piece.
    pair_cols, pair_words (numpy.ndarray): piece column -> word slot pairs.
    """

    ids: numpy.ndarray
    word_cols: numpy.ndarray
    pair_cols: numpy.ndarray
    pair_words: numpy.ndarray


@dataclass
class DocLayout:
    """Where each token of a doc is read.

    token_rows (numpy.ndarray): global row index per token, -1 for tokens
        without wordpieces (whitespace, stripped control characters).
    token_slots (numpy.ndarray): word slot in that row per token.
    rows (List[int]): the global rows this doc spans.
    """

    token_rows: numpy.ndarray
    token_slots: numpy.ndarray
    rows: List[int]


@dataclass
class DocPieces:
    """One doc's pieces, as the row builders read them.

    ids (numpy.ndarray): the doc's wordpiece ids, no specials.
    first (numpy.ndarray): per token, its first piece (len(ids) if it has none).
    words (numpy.ndarray): the tokens that have pieces.
    pairs (Tuple[numpy.ndarray, numpy.ndarray]): (token, piece) pairs, by piece.
    token_rows, token_slots (numpy.ndarray): the layout to fill, -1 so far.
    """

    ids: numpy.ndarray
    first: numpy.ndarray
    words: numpy.ndarray
    pairs: Tuple[numpy.ndarray, numpy.ndarray]
    token_rows: numpy.ndarray
    token_slots: numpy.ndarray

    def unpack(self) -> Tuple[Any, ...]:
        return self.ids, self.first, self.words, self.pairs, self.token_rows, self.token_slots


class Aligner:
    """Tokenize docs and lay them out as encoder rows.

    tokenizer (PreTrainedTokenizerFast): the backbone's fast tokenizer.
    max_length (int): the longest row, specials included.
    overlap (float): share of a window repeated in the next one.
    pretokenized (bool): give the tokenizer the spaCy tokens as words, so that
        no wordpiece spans two tokens. For character-level tasks (Chinese
        segmentation and NER): the digits of "1998" or the letters of "New"
        then get a wordpiece each, as in the paper's character-level input,
        instead of all reading one shared piece.
    """

    def __init__(self, tokenizer: Any, max_length: int, overlap: float = 0.25, pretokenized: bool = False) -> None:
        probe = list(tokenizer.build_inputs_with_special_tokens([-7]))
        cut = probe.index(-7)
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        # Read once: the tokenizer's special-token properties cost tens of
        # microseconds per lookup, a visible share of a sentence.
        self.pad_id = tokenizer.pad_token_id or 0
        self.pretokenized = pretokenized
        self.prefix = numpy.asarray(probe[:cut], dtype="int64")
        self.suffix = numpy.asarray(probe[cut + 1:], dtype="int64")
        self.content = max_length - len(self.prefix) - len(self.suffix)
        if self.content < 2:
            raise ValueError(f"max_length {max_length} leaves no room for wordpieces")
        self.stride = max(1, int(self.content * (1.0 - overlap)))

    def layout(self, docs: Sequence[Doc]) -> Tuple[List[SequenceRow], List[DocLayout]]:
        """Turn docs into rows; RETURNS the rows and one layout per doc."""
        # The Rust tokenizer directly: the Python wrapper around it costs as
        # much again at batch size 1. Nothing may be truncated or padded.
        if self.backend.truncation is not None:
            self.backend.no_truncation()
        if self.backend.padding is not None:
            self.backend.no_padding()
        rows: List[SequenceRow] = []
        if self.pretokenized:
            words = [[token.text for token in doc] for doc in docs]
            encodings = self._encode(words, is_pretokenized=True)
            pairs = [_word_pairs(enc.word_ids) for enc in encodings]
        else:
            encodings = self._encode([doc.text for doc in docs])
            pairs = [align_pieces(doc, numpy.asarray(enc.offsets, dtype="int64").reshape(-1, 2)) for doc, enc in zip(docs, encodings)]
        layouts = [self._layout_doc(doc, enc.ids, pair, rows) for doc, enc, pair in zip(docs, encodings, pairs)]
        return rows, layouts

    def _encode(self, inputs: List[Any], **options: Any) -> List[Any]:
        """The Rust tokenizer's encodings of `inputs`, no special tokens; one
        input through `encode`, which skips the batch call's thread pool."""
        if len(inputs) == 1:
            return [self.backend.encode(inputs[0], add_special_tokens=False, **options)]
        return self.backend.encode_batch(inputs, add_special_tokens=False, **options)

    def _layout_doc(
        self, doc: Doc, ids: List[int], pairs: Tuple[numpy.ndarray, numpy.ndarray], rows: List[SequenceRow]
    ) -> DocLayout:
        n_tokens = len(doc)
        token_rows = numpy.full(n_tokens, -1, dtype="int64")
        token_slots = numpy.full(n_tokens, -1, dtype="int64")
        if n_tokens == 0 or len(ids) == 0:
            return DocLayout(token_rows, token_slots, [])
        ids = numpy.asarray(ids, dtype="int64")
        pair_token, pair_piece = pairs
        first = numpy.full(n_tokens, len(ids), dtype="int64")
        numpy.minimum.at(first, pair_token, pair_piece)
        words = numpy.flatnonzero(first < len(ids))
        if len(words) == 0:
            return DocLayout(token_rows, token_slots, [])
        fits = len(ids) <= self.content
        build = self._single_row if fits else self._windowed_rows
        return build(DocPieces(ids, first, words, pairs, token_rows, token_slots), rows)

    def _windowed_rows(self, doc: "DocPieces", rows: List[SequenceRow]) -> DocLayout:
        """Overlapping windows of at most `content` pieces; each word is read
        from one of them (the one where it sits farthest from a cut)."""
        ids, first, words, pairs, token_rows, token_slots = doc.unpack()
        n_tokens = len(token_rows)
        pair_token, pair_piece = pairs
        starts = self._window_starts(len(ids))
        ends = numpy.minimum(starts + self.content, len(ids))
        word_first = first[words]
        # Window starts and ends both increase, so each window's words and
        # pairs are found by binary search: time and memory stay linear in
        # the document's length (a windows x words table takes gigabytes at
        # 100k words).
        owner = self._owners(starts, word_first, len(ids))
        by_first = numpy.argsort(word_first, kind="stable")
        word_lo = numpy.searchsorted(word_first[by_first], starts, side="left")
        word_hi = numpy.searchsorted(word_first[by_first], ends, side="left")
        # Pairs are ordered by piece (align_pieces, _word_pairs).
        pair_lo = numpy.searchsorted(pair_piece, starts, side="left")
        pair_hi = numpy.searchsorted(pair_piece, ends, side="left")
        by_owner = numpy.argsort(owner, kind="stable")
        owner_bounds = numpy.searchsorted(owner[by_owner], numpy.arange(len(starts) + 1), side="left")
        offset = len(self.prefix)
        doc_rows = []
        slot_of_token = numpy.full(n_tokens, -1, dtype="int64")
        for w_index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            in_window = numpy.sort(words[by_first[word_lo[w_index]:word_hi[w_index]]])
            if len(in_window) == 0:
                # Only the tail of a very long token (a URL): nothing to read
                # here, so the window is not encoded at all.
                continue
            slot_of_token[in_window] = numpy.arange(len(in_window))
            window_tokens = pair_token[pair_lo[w_index]:pair_hi[w_index]]
            window_pieces = pair_piece[pair_lo[w_index]:pair_hi[w_index]]
            keep = slot_of_token[window_tokens] >= 0
            rows.append(
                SequenceRow(
                    ids=numpy.concatenate([self.prefix, ids[start:end], self.suffix]),
                    word_cols=first[in_window] - start + offset,
                    pair_cols=window_pieces[keep] - start + offset,
                    pair_words=slot_of_token[window_tokens[keep]],
                )
            )
            owned = words[by_owner[owner_bounds[w_index]:owner_bounds[w_index + 1]]]
            token_rows[owned] = len(rows) - 1
            token_slots[owned] = slot_of_token[owned]
            doc_rows.append(len(rows) - 1)
            slot_of_token[in_window] = -1
        return DocLayout(token_rows, token_slots, doc_rows)

    def _single_row(self, doc: "DocPieces", rows: List[SequenceRow]) -> DocLayout:
        """The layout of a doc that fits one row, most docs: the windowing
        searches all reduce to "everything", and at batch size 1 their numpy
        calls cost several percent of the encoder's time."""
        ids, first, words, pairs, token_rows, token_slots = doc.unpack()
        pair_token, pair_piece = pairs
        slot_of_token = numpy.full(len(token_rows), -1, dtype="int64")
        slot_of_token[words] = numpy.arange(len(words))
        offset = len(self.prefix)
        rows.append(
            SequenceRow(
                ids=numpy.concatenate([self.prefix, ids, self.suffix]),
                word_cols=first[words] + offset,
                pair_cols=pair_piece + offset,
                pair_words=slot_of_token[pair_token],
            )
        )
        token_rows[words] = len(rows) - 1
        token_slots[words] = slot_of_token[words]
        return DocLayout(token_rows, token_slots, [len(rows) - 1])

    def _owners(self, starts: numpy.ndarray, word_first: numpy.ndarray, n_pieces: int) -> numpy.ndarray:
        """The window each word is read from: the first of those in which its
        first piece is farthest from a cut (document ends are not cuts)."""
        # The windows holding a piece are a run [lo, hi) of at most a few.
        lo = numpy.searchsorted(starts + self.content, word_first, side="right")
        hi = numpy.searchsorted(starts, word_first, side="right")
        owner = lo.copy()
        best = numpy.full(len(word_first), -1, dtype="int64")
        for step in range(int((hi - lo).max())):
            window = numpy.minimum(lo + step, len(starts) - 1)
            s = starts[window]
            e = s + self.content
            left = numpy.where(s > 0, word_first - s, n_pieces)
            right = numpy.where(e < n_pieces, e - 1 - word_first, n_pieces)
            centrality = numpy.where(lo + step < hi, numpy.minimum(left, right), -1)
            better = centrality > best
            owner[better] = window[better]
            best[better] = centrality[better]
        return owner

    def _window_starts(self, n_pieces: int) -> numpy.ndarray:
        if n_pieces <= self.content:
            return numpy.zeros(1, dtype="int64")
        last = n_pieces - self.content
        starts = list(range(0, last, self.stride)) + [last]
        return numpy.asarray(starts, dtype="int64")


def _word_pairs(word_ids: List[Optional[int]]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(token, piece) pairs from a pretokenized encoding's word ids."""
    word = numpy.asarray([-1 if w is None else w for w in word_ids], dtype="int64")
    pieces = numpy.flatnonzero(word >= 0)
    return word[pieces], pieces


def align_pieces(doc: Doc, offsets: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Pair wordpieces with the spaCy tokens whose characters they overlap.

    Same relation as spacy-transformers' ``get_alignment_via_offset_mapping``
    (a test checks they agree), computed with two binary searches instead of a
    per-character table and a dict of tokens, which cost 12% of the pipeline
    at batch size 1.

    offsets (numpy.ndarray): ``[n_pieces, 2]`` character spans in ``doc.text``.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray]): token and piece index of
        every overlapping (token, piece) pair, ordered by piece.
    """
    spans = doc.to_array([IDX, LENGTH]).astype("int64")
    starts = spans[:, 0]
    ends = starts + spans[:, 1]
    p_start, p_end = offsets[:, 0], offsets[:, 1]
    # First token ending after the piece starts, last token starting before it ends.
    first = numpy.searchsorted(ends, p_start, side="right")
    last = numpy.searchsorted(starts, p_end, side="left") - 1
    if numpy.array_equal(first, last) and bool((p_end > p_start).all()):
        # The usual case: every piece inside one token. The general pairing
        # below costs a dozen more numpy calls, a visible share of a
        # sentence at batch size 1.
        return first, numpy.arange(len(offsets), dtype="int64")
    counts = numpy.clip(last - first + 1, 0, None)
    counts[p_end <= p_start] = 0
    pair_piece = numpy.repeat(numpy.arange(len(offsets)), counts)
    within = numpy.arange(len(pair_piece)) - numpy.repeat(numpy.cumsum(counts) - counts, counts)
    pair_token = numpy.repeat(first, counts) + within
    return pair_token.astype("int64"), pair_piece.astype("int64")


def collate(rows: Sequence[SequenceRow], pad_id: int, device: Optional[torch.device] = None) -> EncoderInput:
    """Pad rows into one :class:`EncoderInput`."""
    n = len(rows)
    seq = max(len(r.ids) for r in rows)
    n_words = max(len(r.word_cols) for r in rows)
    ids = numpy.full((n, seq), pad_id, dtype="int64")
    word_pieces = numpy.full((n, n_words), -1, dtype="int64")
    for i, row in enumerate(rows):
        ids[i, : len(row.ids)] = row.ids
        word_pieces[i, : len(row.word_cols)] = row.word_cols
    pair_counts = [len(r.pair_cols) for r in rows]
    as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return EncoderInput(
        input_ids=as_tensor(ids),
        lengths=as_tensor(numpy.asarray([len(r.ids) for r in rows], dtype="int64")),
        word_pieces=as_tensor(word_pieces),
        piece_rows=as_tensor(numpy.repeat(numpy.arange(n, dtype="int64"), pair_counts)),
        piece_cols=as_tensor(numpy.concatenate([r.pair_cols for r in rows])),
        piece_words=as_tensor(numpy.concatenate([r.pair_words for r in rows])),
    )
