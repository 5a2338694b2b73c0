"""Which live rows of a batch share one attention call at prediction.

One attention call pads every row's queries to the batch's most active row
and its keys to the longest live row. After exits the active counts of a
batch spread widely (a row with most of its words gone runs with a handful
of queries beside one that still has all of them), so most of that grid is
padding: on the demo's test set at batch 32, length-sorted, TOKEE 2x bf16,
a call per row would have run 41% of the query x key slots (CoNLL-2003: 43%).
CPU attention costs
about one unit per query x key slot, so cutting the rows into a few
contiguous ranges, each padded to its own widest row, saves the padding at
the price of one more call per range.

The ranges are contiguous in the batch's row order, so each is a view of the
query, key and value grids (no copies): sub-batches are length-sorted
(`layers/sub_batches.py`), so neighbouring rows have similar key counts.
Plain Python on host-side sizes: nothing here touches a tensor.
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

# What one more attention call costs, in query x key slots: the call's
# dispatch, the boolean mask's conversion, the kernel's per-call set-up and
# the host-side slicing. Timed alone, a bf16 call cost ~7 us plus ~19 us per
# row and ~0.04 us per slot (1 thread, 12 heads of 32), so the fixed part is
# a few hundred slots; in the pipeline (CoNLL-2003 test, batch 32
# length-sorted, bf16, interleaved) 1,024 and 4,096 were within noise of each
# other, 3-6% over one call.
GROUP_OVERHEAD = 1024
# At most this many calls per layer.
MAX_GROUPS = 4


class AttentionGroup(NamedTuple):
    """Rows ``start:stop`` of the live rows, their queries padded to
    `queries` slots and their keys to `keys` slots."""

    start: int
    stop: int
    queries: int
    keys: int

    @property
    def slots(self) -> int:
        return (self.stop - self.start) * self.queries * self.keys


def round_up(n: int, block: int) -> int:
    """`n` rounded up to a multiple of `block`."""
    return -(-n // block) * block


def attention_groups(queries: Sequence[int], keys: Sequence[int], key_block: int = 1,
                     overhead: Optional[float] = None, max_groups: Optional[int] = None) -> List[AttentionGroup]:
    """Cut the live rows into contiguous ranges, one attention call each.

    queries (Sequence[int]): each live row's active pieces (its query count).
    keys (Sequence[int]): each live row's present pieces (its key count).
    key_block (int): key counts run rounded up to a multiple of this
        (`layer_step.key_span`: 16 in bf16 on CPU, else 1).
    overhead (Optional[float]): the cost of one more call, in query x key
        slots; None = GROUP_OVERHEAD (read at call time, so a benchmark can
        switch it).
    max_groups (Optional[int]): the most ranges; None = MAX_GROUPS (1 = one
        call for the whole batch, as before this module).
    RETURNS (List[AttentionGroup]): the ranges in row order, covering every
        row once; one range (the whole batch) where no cut pays.

    Each step cuts the range whose best cut saves the most slots (net of
    `overhead`), where one range's best cut is found in one pass with
    running maxima from both ends.
    """
    overhead = GROUP_OVERHEAD if overhead is None else overhead
    max_groups = MAX_GROUPS if max_groups is None else max_groups
    if len(queries) != len(keys):
        raise ValueError(f"{len(queries)} query counts for {len(keys)} rows")
    if not queries:
        return []
    ranges = greedy_ranges(len(queries), lambda start, stop: _best_cut(queries, keys, key_block, start, stop),
                           max_groups, overhead)
    return [_group(queries, keys, key_block, start, stop) for start, stop in ranges]


def greedy_ranges(rows: int, best_cut: Callable[[int, int], Tuple[int, float]], max_groups: int,
                  overhead: float) -> List[Tuple[int, int]]:
    """Rows ``0:rows`` cut into at most `max_groups` contiguous ranges: each
    step makes the cut that saves the most slots, while that saving is more
    than `overhead`. Each range's best cut is found once: a step only
    re-cuts the two new ranges.

    rows (int): how many rows.
    best_cut (Callable[[int, int], Tuple[int, float]]): ``(start, stop) ->
        (where to cut, slots saved)``; -inf saved for a single row.
    max_groups (int): the most ranges.
    overhead (float): what one more range costs, in slots.
    RETURNS (List[Tuple[int, int]]): ``(start, stop)`` in row order.
    """
    ranges = [(0, rows)]
    if max_groups < 2:
        return ranges
    cuts = [best_cut(0, rows)]
    while len(ranges) < max_groups:
        best = max(range(len(ranges)), key=lambda i: cuts[i][1])
        at, saving = cuts[best]
        if not saving > overhead:
            break
        start, stop = ranges[best]
        ranges[best:best + 1] = [(start, at), (at, stop)]
        cuts[best:best + 1] = [best_cut(start, at), best_cut(at, stop)]
    return ranges


def _group(queries: Sequence[int], keys: Sequence[int], key_block: int, start: int, stop: int) -> AttentionGroup:
    return AttentionGroup(start, stop, max(queries[start:stop]), round_up(max(keys[start:stop]), key_block))


def _best_cut(queries: Sequence[int], keys: Sequence[int], key_block: int, start: int, stop: int) -> Tuple[int, float]:
    """The cut of rows ``start:stop`` into two ranges with the fewest slots,
    and the slots it saves (-inf for a single row)."""
    if stop - start < 2:
        return start, float("-inf")
    # Suffix maxima: the widest row from each position to the end.
    tail_q = list(queries[start:stop])
    tail_k = list(keys[start:stop])
    for i in range(len(tail_q) - 2, -1, -1):
        tail_q[i] = max(tail_q[i], tail_q[i + 1])
        tail_k[i] = max(tail_k[i], tail_k[i + 1])
    best, best_cut = None, -1
    head_q = head_k = 0
    for offset in range(1, stop - start):
        head_q = max(head_q, queries[start + offset - 1])
        head_k = max(head_k, keys[start + offset - 1])
        cost = (offset * head_q * round_up(head_k, key_block)
                + (stop - start - offset) * tail_q[offset] * round_up(tail_k[offset], key_block))
        if best is None or cost < best:
            best, best_cut = cost, start + offset
    return best_cut, float(_group(queries, keys, key_block, start, stop).slots - best)
