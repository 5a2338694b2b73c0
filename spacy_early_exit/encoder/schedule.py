"""Which wordpieces a layer runs, derived from which words are still active.

Exits only happen after a layer, and most layers see no change at all (every
layer at full depth; most upper layers of a sentence whose last tokens are
still thinking). So the bookkeeping a layer needs (piece masks, packed rows,
counts for the FLOPs model, off-ramp indices) is built once per change of the
active set and reused until the next change. At batch size 1 this bookkeeping
is a few dozen tiny tensor ops per layer, a visible share of the layer itself.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from .layer_step import PackedRows


class PieceOwners:
    """The map from word activity to wordpiece activity for one batch.

    A piece runs while any word it belongs to runs; a piece that belongs to no
    word (a special token) runs while any word of its row does.

    piece_rows, piece_cols, piece_words (torch.Tensor): long ``[n_pairs]``,
        piece (row, col) belongs to word (row, piece_words).
    real (torch.Tensor): bool ``[batch, seq]``, the non-padding pieces.
    n_words (int): word slots per row.
    """

    def __init__(
        self,
        piece_rows: torch.Tensor,
        piece_cols: torch.Tensor,
        piece_words: torch.Tensor,
        real: torch.Tensor,
        n_words: int,
    ) -> None:
        n_rows, seq = real.shape
        device = real.device
        owners = torch.zeros((n_rows, seq), dtype=torch.int32, device=device).index_put(
            (piece_rows, piece_cols), torch.ones_like(piece_rows, dtype=torch.int32), accumulate=True
        )
        self.real = real
        self.loose = real & (owners == 0)
        self.pairs = (piece_rows, piece_cols, piece_words)
        self.shared = bool((owners > 1).any())
        self.index: Optional[torch.Tensor] = None
        if not self.shared:
            # One lookup per piece into [word flags..., row flags..., False]:
            # a word's flag, its row's flag for a special, False for padding.
            word_slots = n_rows * n_words
            index = torch.full((n_rows, seq), word_slots + n_rows, dtype=torch.long, device=device)
            index[piece_rows, piece_cols] = piece_rows * n_words + piece_words
            row_slot = word_slots + torch.arange(n_rows, device=device)[:, None]
            self.index = torch.where(self.loose, row_slot, index)

    def active(self, word_active: torch.Tensor, row_live: Optional[torch.Tensor] = None) -> torch.Tensor:
        """word_active (torch.Tensor): bool ``[batch, words]``.
        row_live (Optional[torch.Tensor]): bool ``[batch]``, rows with any
            active word, when the caller has it already.
        RETURNS (torch.Tensor): bool ``[batch, seq]``, the pieces that run."""
        if row_live is None:
            row_live = word_active.any(dim=1)
        if self.index is not None:
            flags = torch.cat((word_active.reshape(-1), row_live, row_live.new_zeros(1)))
            return flags[self.index]
        # A piece shared by two words (rare: a tokenizer merging across a
        # token boundary) runs while either runs: count its active owners.
        rows, cols, words = self.pairs
        owned = torch.zeros(self.real.shape, dtype=torch.int32, device=self.real.device).index_put(
            (rows, cols), word_active[rows, words].to(torch.int32), accumulate=True
        )
        return (owned > 0) | (self.loose & row_live[:, None])


@dataclass
class WordIndex:
    """A set of words, in the forms the off-ramps need.

    rows, cols (torch.Tensor): the words' positions, row-major.
    pieces (torch.Tensor): each word's first piece as a flat ``row * seq + col``
        index into ``hidden.view(-1, width)``.
    sizes (List[int]): words per row, on the host (for the FLOPs count).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    pieces: torch.Tensor
    sizes: List[int]

    @classmethod
    def build(
        cls, words: torch.Tensor, first_pieces: torch.Tensor, seq: int, sizes: Optional[List[int]] = None
    ) -> "WordIndex":
        """words (torch.Tensor): bool ``[batch, words]``; first_pieces
        (torch.Tensor): long ``[batch, words]``, each word's first piece column
        (any valid column on padding); seq (int): columns of the piece grid;
        sizes (Optional[List[int]]): words per row, when already on the host."""
        rows, cols = words.nonzero(as_tuple=True)
        if sizes is None:
            sizes = words.sum(dim=1).tolist()
        return cls(rows, cols, rows * seq + first_pieces[rows, cols], sizes)


@dataclass
class LayerSchedule:
    """What one layer computes for a given set of active words.

    present (torch.Tensor): bool ``[batch, seq]``, key/value pieces (the real
        pieces of rows with any active word).
    present_sizes (List[int]): ``present`` per row, on the host.
    active (PackedRows): the pieces that are updated (``active.sizes`` per row).
    words (WordIndex): the active words.
    """

    present: torch.Tensor
    present_sizes: List[int]
    active: PackedRows
    words: WordIndex

    @classmethod
    def build(cls, owners: PieceOwners, word_active: torch.Tensor, first_pieces: torch.Tensor) -> "LayerSchedule":
        """owners (PieceOwners): the batch's piece map.
        word_active (torch.Tensor): bool ``[batch, words]``.
        first_pieces (torch.Tensor): long ``[batch, words]`` (see WordIndex)."""
        row_live = word_active.any(dim=1)
        piece_active = owners.active(word_active, row_live)
        present = owners.real & row_live[:, None]
        # The one host sync of a schedule: packing sizes for the layer, and
        # the counts the FLOPs model needs (plain ints from here on).
        sizes = torch.stack((present.sum(dim=1), piece_active.sum(dim=1), word_active.sum(dim=1)))
        present_sizes, active_sizes, word_sizes = sizes.tolist()
        return cls(
            present=present,
            present_sizes=present_sizes,
            active=PackedRows.from_mask(piece_active, active_sizes),
            words=WordIndex.build(word_active, first_pieces, present.shape[1], word_sizes),
        )

    @property
    def empty(self) -> bool:
        return len(self.active) == 0
