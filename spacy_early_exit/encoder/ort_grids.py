"""The attention grids of the "int8-ort" layer graph (ort_layer.py): which
live rows of a call share a grid, and where each query and key sits in it.

After exits the active counts of a batch's rows spread apart, and one grid
padded to the batch's most active and longest row runs mostly padding (on
CoNLL-2003 at batch 32, TOKEE 2x length-sorted: 2.4 times the query x key
slots the rows need). The layer graph has `ATTENTION_GROUPS` grids, each
padded to its own rows' widest; this module cuts the rows into that many
sets. The same idea as attention_groups.py (one torch call per range), with
two differences: the grids are index lists, so the rows may be sorted by
their queries first (any order costs the same), and the graph has a fixed
number of grids, so an unused one gets a one-slot stand-in. numpy only.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .attention_groups import greedy_ranges

# Added to the attention scores of padding keys: exp() of it is 0 in fp32,
# and a finite value keeps a (never occurring) all-padding row from NaNs.
MASK_VALUE = -1e9
# The layer graph's grids. Each costs its nodes on every call, used or not:
# CoNLL-2003's recorded batch-32 calls replayed through 2, 3 and 4 grids ran
# 1.04x one grid's speed each (benchmarks/ort_layer_profile.py); earlier
# replays by hand 0.99-1.08x (2), 1.02-1.07x (3), 1.05-1.06x (4).
ATTENTION_GROUPS = 3
# What one more set costs, in query x key slots: its nodes' dispatch and
# this module's numpy work, ~40 us, against ~0.05 us per slot of attention
# in the same calls.
GROUP_OVERHEAD = 1024


def grouped_feed(q_row: np.ndarray, q_slot: np.ndarray, query_counts: Sequence[int], key_counts: Sequence[int],
                 kv_grid: np.ndarray, groups: int = ATTENTION_GROUPS,
                 overhead: Optional[float] = None) -> Dict[str, np.ndarray]:
    """The attention inputs of `layer_graph` for one call: the live rows cut
    into at most `groups` sets, each padded to its own most active and
    longest row.

    q_row, q_slot (np.ndarray): int64 ``[queries]``, each query's live row
        and its slot in that row (0, 1, ... in piece order).
    query_counts, key_counts (Sequence[int]): each live row's queries and
        keys (its present pieces: the first key_counts[r] slots of its row).
    kv_grid (np.ndarray): int64 ``[rows, key_slots]``, each key slot's row
        in kv_rows.
    groups (int): the graph's groups; unused ones get a one-slot stand-in
        that no query reads.
    overhead (Optional[float]): what one more set costs, in query x key
        slots; None = GROUP_OVERHEAD (read at call time).
    RETURNS (Dict[str, np.ndarray]): q_back and each group's q_grid,
        kv_grid and add_mask.
    """
    queries = np.asarray(query_counts, np.int64)
    keys = np.asarray(key_counts, np.int64)
    # The grids are index lists, so the rows may sit in any order: sorted by
    # their queries, a contiguous range's first row is its most active.
    order = np.argsort(-queries, kind="stable")
    ranges = row_ranges(queries[order], keys[order], groups, GROUP_OVERHEAD if overhead is None else overhead)
    query_grid = np.zeros((len(queries), int(queries.max())), np.int64)
    query_grid[q_row, q_slot] = np.arange(len(q_row))
    base = np.zeros(len(queries), np.int64)
    feed: Dict[str, np.ndarray] = {}
    offset = 0
    for index in range(groups):
        if index >= len(ranges):
            feed[f"q_grid_{index}"] = feed[f"kv_grid_{index}"] = np.zeros((1, 1), np.int64)
            feed[f"add_mask_{index}"] = np.zeros((1, 1, 1), np.float32)
            continue
        start, stop = ranges[index]
        members = order[start:stop]
        slots, span = max(int(queries[members[0]]), 1), int(keys[members].max())
        base[members] = offset + np.arange(stop - start) * slots
        offset += (stop - start) * slots
        feed[f"q_grid_{index}"] = query_grid[members, :slots]
        feed[f"kv_grid_{index}"] = kv_grid[members, :span]
        feed[f"add_mask_{index}"] = np.where(np.arange(span) < keys[members, None], np.float32(0),
                                             np.float32(MASK_VALUE))[:, None, :]
    feed["q_back"] = base[q_row] + q_slot
    return feed


def row_ranges(queries: np.ndarray, keys: np.ndarray, groups: int, overhead: float) -> List[Tuple[int, int]]:
    """Cut rows sorted by their queries (most first) into at most `groups`
    contiguous ranges, each run as ``rows x its first row's queries x its
    longest row's keys`` slots: greedily, the cut that saves the most slots
    net of `overhead`, while one saves anything
    (`attention_groups.greedy_ranges`, with a numpy search for each range's
    cut: the pure-Python one there cost 30 us for 32 rows).

    On CoNLL-2003 at batch 32 (TOKEE 2x, length-sorted) one grid ran 2.4
    times the slots the rows need, two sets 1.5 times, three 1.3 times.

    queries, keys (np.ndarray): int64 per row, queries non-increasing.
    RETURNS (List[Tuple[int, int]]): ``(start, stop)`` in row order.
    """
    return greedy_ranges(len(queries), lambda start, stop: _best_cut(queries, keys, start, stop), groups, overhead)


def _best_cut(queries: np.ndarray, keys: np.ndarray, start: int, stop: int) -> Tuple[int, float]:
    """Where to cut rows ``start:stop`` in two, and the slots that saves
    (-inf for a single row)."""
    n = stop - start
    if n < 2:
        return start, float("-inf")
    q, k = queries[start:stop], keys[start:stop]
    head_keys = np.maximum.accumulate(k)[:-1]
    tail_keys = np.maximum.accumulate(k[::-1])[::-1][1:]
    heads = np.arange(1, n)
    cost = heads * q[0] * head_keys + (n - heads) * q[1:] * tail_keys
    best = int(np.argmin(cost))
    return start + best + 1, float(n * q[0] * k.max() - cost[best])
