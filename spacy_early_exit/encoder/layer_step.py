"""One encoder layer with halt-and-copy, batched over sequences of any length.

Every present wordpiece contributes keys and values. Only *active* wordpieces
issue queries and get the attention output projection and the feed-forward
block; halted ones keep their hidden state unchanged (they are "copied" up).

The active queries of all sequences are packed into a
``[batch, max_active, hidden]`` tensor (a cumulative-sum slot per sequence), so
attention is one batched call whatever the mix of lengths and exits, and the
query, output and feed-forward projections run on ``[n_active, hidden]`` rows
with no padding at all. Keys and values are projected on the present pieces
packed, or at prediction on the live rows' padded grid where that has little
padding (`GRID_PROJECTION_LIMIT`), and in bf16 attention sees them padded
to a multiple of 16 keys on CPU (`key_span`).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .attention_groups import attention_groups, round_up
from .backbone import LayerParts

# In bf16 at prediction the keys and values are projected on the padded grid
# of the live rows when it has at most this many rows per present piece:
# packing costs a gather, two zero fills and two scatters of the key grid per
# layer, more than a padded row's bf16 product (benchmarks/batch_kernels.py,
# batch 32 bf16: -1% to +6% over two runs whose noise is ~3%). fp32 and int8
# products cost several times more per row, and there the grid ran 4-5%
# slower than packing in one run: they pack.
GRID_PROJECTION_LIMIT = 2.0
# bf16 attention runs key lengths in multiples of this on CPU (see key_span).
KEY_BLOCK = 16


class PackedRows:
    """Where a set of wordpieces lives in the padded ``[batch, seq]`` grid.

    mask (torch.Tensor): bool ``[batch, seq]``, True for selected pieces.
    sizes (Optional[List[int]]): selected pieces per row, when the caller
        already has them on the host (saves a sync).

    rows, cols (torch.Tensor): 1-D positions of the selected wordpieces.
    slots (torch.Tensor): each selected wordpiece's slot in its row's packed
        list (built on first use: a single live row never needs it).
    width (int): the largest number of selected wordpieces in one row.
    """

    def __init__(self, mask: torch.Tensor, sizes: Optional[List[int]] = None) -> None:
        self.mask = mask
        self.sizes = sizes if sizes is not None else mask.sum(dim=1).tolist()
        self.rows, self.cols = mask.nonzero(as_tuple=True)
        self.width = max(self.sizes, default=0)
        self.grid: Tuple[int, int] = (int(mask.shape[0]), int(mask.shape[1]))
        self._slots: Optional[torch.Tensor] = None
        self._flat: Optional[torch.Tensor] = None

    @classmethod
    def from_mask(cls, mask: torch.Tensor, sizes: Optional[List[int]] = None) -> "PackedRows":
        """The selected pieces of `mask` (see the class for the arguments)."""
        return cls(mask, sizes)

    @property
    def flat(self) -> torch.Tensor:
        """Each selected wordpiece's row in the grid flattened to ``[batch * seq]``:
        a gather by one flat index (`index_select`) took a quarter of the time
        of indexing by rows and columns (bf16, ~1,000 of 32 x 59 pieces)."""
        if self._flat is None:
            self._flat = self.rows * self.grid[1] + self.cols
        return self._flat

    @property
    def slots(self) -> torch.Tensor:
        if self._slots is None:
            self._slots = (torch.cumsum(self.mask, dim=1) - 1)[self.rows, self.cols]
        return self._slots

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def dense(self) -> bool:
        """True when every position of the grid is selected (no padding, no exits)."""
        return len(self) == self.grid[0] * self.grid[1]


def halt_and_copy_layer(
    parts: LayerParts,
    hidden: torch.Tensor,
    present: torch.Tensor,
    active: PackedRows,
    num_heads: int,
    hidden_dropout: float = 0.0,
    attention_dropout: float = 0.0,
    present_sizes: Optional[List[int]] = None,
) -> torch.Tensor:
    """Run one layer for the active wordpieces and copy the others.

    parts (LayerParts): the layer's modules.
    hidden (torch.Tensor): ``[batch, seq, hidden]`` states entering the layer.
    present (torch.Tensor): bool ``[batch, seq]``, the wordpieces that serve as
        keys/values (real pieces of sequences still running).
    active (PackedRows): the wordpieces that are updated by this layer.
    num_heads (int): attention heads.
    hidden_dropout, attention_dropout (float): dropout rates (pass 0 at inference).
    present_sizes (Optional[List[int]]): ``present`` per row, when known on the host.
    RETURNS (torch.Tensor): the ``[batch, seq, hidden]`` states after the layer.
        At prediction (no gradient recorded) that is `hidden` itself, updated
        in place unless every piece was active; in training a new tensor.
    """
    batch, seq, width = hidden.shape
    if len(active) == 0:
        return hidden
    head_dim = width // num_heads
    if active.dense:
        return _dense_layer(parts, hidden, num_heads, hidden_dropout, attention_dropout)
    # Keys and values only for the rows that still run, and only up to their
    # length. One host sync (none when the caller has the sizes) gives every
    # size this needs.
    counts = present_sizes if present_sizes is not None else present.sum(dim=1).tolist()
    live_list = [i for i, n in enumerate(counts) if n]
    span = max(counts)
    n_live = len(live_list)
    if n_live == batch:
        keys_in = hidden[:, :span]
        key_mask = present[:, :span]
    else:
        live_rows = torch.tensor(live_list, device=hidden.device)
        keys_in = hidden.index_select(0, live_rows)[:, :span]
        key_mask = present.index_select(0, live_rows)[:, :span]
    unpadded = all(counts[i] == span for i in live_list)
    q_rows = None if n_live == 1 else (torch.cumsum(present.any(dim=1), dim=0) - 1)[active.rows]
    if parts.dense_step is not None:
        return _write_back(hidden, active, _one_call_step(parts, keys_in, key_mask, unpadded, q_rows, active,
                                                          *_live_sizes(active.sizes, counts, live_list)))
    x = hidden.reshape(-1, width).index_select(0, active.flat)
    kv_span = key_span(span, hidden)
    if unpadded and kv_span == span:
        # No padding among the live rows: project them as they are.
        (keys, values), attn_mask = _keys_values(parts, keys_in), None
    elif unpadded or (not torch.is_grad_enabled() and hidden.dtype == torch.bfloat16
                      and n_live * span <= GRID_PROJECTION_LIMIT * sum(counts)):
        # Little padding (length-sorted batches): the padded grid as it is,
        # masked in attention (see GRID_PROJECTION_LIMIT).
        keys, values = (_widened(t, kv_span) for t in _keys_values(parts, keys_in))
        attn_mask = _widened(key_mask, kv_span)[:, None, None, :]
    else:
        kv_rows = key_mask.nonzero(as_tuple=True)
        # In place into fresh zeros: autograd-safe (the zeros need no
        # gradient) and one [rows, span, width] allocation instead of two.
        keys, values = (
            keys_in.new_zeros(n_live, kv_span, width).index_put_(kv_rows, projected)
            for projected in _keys_values(parts, keys_in[kv_rows])
        )
        attn_mask = _widened(key_mask, kv_span)[:, None, None, :]

    if q_rows is None:
        # One sequence: its active pieces are already in slot order.
        queries = parts.query(x)[None]
    else:
        queries = x.new_zeros(n_live, active.width, width).index_put_((q_rows, active.slots), parts.query(x))

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (num_heads, head_dim)).transpose(1, 2)

    groups = None
    if q_rows is not None and attention_dropout == 0 and not torch.is_grad_enabled():
        # Prediction only: training keeps one call and its results to the bit.
        groups = attention_groups(*_live_sizes(active.sizes, counts, live_list), _key_block(hidden))
    if groups is not None and len(groups) > 1:
        # Several calls, each over a contiguous range of rows padded to its
        # own widest (attention_groups.py); each range is a view of the grids.
        context = queries.new_empty(n_live, active.width, width)
        for g in groups:
            if g.queries == 0:
                continue
            rows = slice(g.start, g.stop)
            mask = attn_mask[rows, ..., :g.keys] if attn_mask is not None else None
            part = F.scaled_dot_product_attention(
                heads(queries[rows, :g.queries]), heads(keys[rows, :g.keys]), heads(values[rows, :g.keys]),
                attn_mask=mask,
            )
            context[rows, :g.queries].unflatten(-1, (num_heads, head_dim)).copy_(part.transpose(1, 2))
    else:
        context = F.scaled_dot_product_attention(
            heads(queries), heads(keys), heads(values), attn_mask=attn_mask, dropout_p=attention_dropout
        )
        context = context.transpose(1, 2).reshape(n_live, active.width, width)
    if q_rows is None:
        context = context[0]
    else:
        context = context.reshape(-1, width).index_select(0, q_rows * active.width + active.slots)
    return _write_back(hidden, active, _output_block(parts, context, x, hidden_dropout))


def key_span(span: int, hidden: torch.Tensor) -> int:
    """How many key columns attention runs for `span` real ones: in bf16 on
    CPU the next multiple of 16, the extra keys masked out. torch's CPU attention
    kernel runs key lengths that are not a multiple of 16 through a much
    slower path: measured (1 thread, AMX, 32 rows x 12 heads x 13 queries,
    `attention_key_lengths` in benchmarks/results/kernel_choices_batch.json),
    bf16: 1,854 us at 14 keys against 653 at 16, 1,343 at 30 against 722 at
    32, 1,662 at 62 against 1,009 at 64; fp32 alike (1,440 against 426 at 14
    and 16). In the pipeline only bf16 gained (16-21% at batch 32,
    benchmarks/batch_kernels.py); fp32 and int8, whose time is their products,
    gained nothing measurable, so they (and training) keep their key lengths
    and their results to the bit."""
    return round_up(span, _key_block(hidden))


def _key_block(hidden: torch.Tensor) -> int:
    """The multiple key lengths run in (see `key_span`): KEY_BLOCK in bf16 on CPU, else 1."""
    return KEY_BLOCK if hidden.device.type == "cpu" and hidden.dtype == torch.bfloat16 else 1


def _widened(t: torch.Tensor, columns: int) -> torch.Tensor:
    """`t` (``[rows, span, ...]``) with zero (False) columns appended up to `columns`."""
    span = t.shape[1]
    if span == columns:
        return t
    if torch.is_grad_enabled() and t.requires_grad:
        return torch.cat((t, t.new_zeros(t.shape[0], columns - span, *t.shape[2:])), dim=1)
    out = t.new_empty(t.shape[0], columns, *t.shape[2:])
    out[:, :span] = t
    out[:, span:] = 0
    return out


def _live_sizes(query_sizes: List[int], key_sizes: List[int], live_list: List[int]) -> Tuple[List[int], List[int]]:
    """Each live row's active and present pieces (host-side sizes), from
    those of every row: the same lists when every row is live."""
    if len(live_list) == len(key_sizes):
        return query_sizes, key_sizes
    return [query_sizes[i] for i in live_list], [key_sizes[i] for i in live_list]


def _one_call_step(parts: LayerParts, keys_in: torch.Tensor, key_mask: torch.Tensor, unpadded: bool,
                   q_rows: Optional[torch.Tensor], active: PackedRows, query_counts: List[int],
                   key_counts: List[int]) -> torch.Tensor:
    """The layer's new states of the active pieces from `parts.dense_step`:
    the products run on packed rows (the present pieces; the active ones
    are picked from them by row), and each piece's live row and slot say
    where it sits in the attention grids (ort_grids.grouped_feed)."""
    n_live, span, width = keys_in.shape
    if unpadded:
        kv_rows, kv_grid = keys_in.reshape(-1, width), torch.arange(n_live * span).view(n_live, span)
    else:
        flat_mask = key_mask.reshape(-1)
        # Padding slots point at row 0: masked out of attention, never read.
        kv_grid = (torch.cumsum(flat_mask, dim=0) - 1).clamp_(min=0).view(n_live, span)
        kv_rows = keys_in.reshape(-1, width)[flat_mask]
    if q_rows is None:
        q_rows, q_slots = torch.zeros_like(active.cols), torch.arange(len(active))
    else:
        q_slots = active.slots
    q_in_kv = kv_grid[q_rows, active.cols]
    return parts.dense_step(kv_rows, q_in_kv, q_rows, q_slots, kv_grid, query_counts, key_counts)


def _write_back(hidden: torch.Tensor, active: PackedRows, out: torch.Tensor) -> torch.Tensor:
    """`hidden` with the active pieces' new states `out` written in."""
    if not (torch.is_grad_enabled() and (hidden.requires_grad or out.requires_grad)):
        # Prediction: write the updated pieces into the states in place. The
        # out-of-place put copied the whole [batch, seq, hidden] grid per
        # layer (11% of a profiled batch-32 prediction); training keeps the
        # copy autograd needs.
        return hidden.index_put_((active.rows, active.cols), out)
    return hidden.index_put((active.rows, active.cols), out)


def _dense_layer(
    parts: LayerParts, hidden: torch.Tensor, num_heads: int, hidden_dropout: float, attention_dropout: float
) -> torch.Tensor:
    """The same layer when every position is an active, real piece: no packing
    or masks needed (batch size 1, or equal lengths at full depth)."""
    batch, seq, width = hidden.shape
    head_dim = width // num_heads
    if parts.dense_step is not None:
        rows = hidden.reshape(-1, width)
        order = torch.arange(rows.shape[0], device=hidden.device)
        q_rows, q_slots = order // seq, order % seq
        out = parts.dense_step(rows, order, q_rows, q_slots, order.view(batch, seq), [seq] * batch, [seq] * batch)
        return out.view(batch, seq, width).to(hidden.dtype)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, seq, num_heads, head_dim).transpose(1, 2)

    if parts.query_key_value is not None:
        queries, keys, values = parts.query_key_value(hidden).chunk(3, dim=-1)
    else:
        queries = parts.query(hidden)
        keys, values = _keys_values(parts, hidden)
    context = F.scaled_dot_product_attention(heads(queries), heads(keys), heads(values), dropout_p=attention_dropout)
    context = context.transpose(1, 2).reshape(batch, seq, width)
    return _output_block(parts, context, hidden, hidden_dropout)


def _output_block(parts: LayerParts, context: torch.Tensor, residual: torch.Tensor, hidden_dropout: float) -> torch.Tensor:
    """Attention output projection, residual and norm, then the feed-forward
    block with its residual and norm. Dropout only where it does something:
    at prediction each skipped call is one op less per projection."""
    if parts.output_block is not None and hidden_dropout == 0:
        return parts.output_block(context, residual)
    attn = parts.attn_out(context)
    if hidden_dropout > 0:
        attn = F.dropout(attn, hidden_dropout, training=True)
    attn = parts.attn_norm(attn + residual)
    ffn = parts.ffn_out(parts.ffn_act(parts.ffn_in(attn)))
    if parts.ffn_dropout and hidden_dropout > 0:
        ffn = F.dropout(ffn, hidden_dropout, training=True)
    return parts.ffn_norm(ffn + attn)


def _keys_values(parts: LayerParts, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The key and value projections of `x`, in one call where the layer has a fused one."""
    if parts.key_value is not None:
        keys, values = parts.key_value(x).chunk(2, dim=-1)
        return keys, values
    return parts.key(x), parts.value(x)
