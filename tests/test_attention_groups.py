"""Attention over contiguous row ranges at prediction: every row once, the cut
pays for its call, and the layer's result does not depend on it."""
import random

import pytest
import torch
import torch.nn.functional as F

from spacy_early_exit.encoder import attention_groups as groups_module
from spacy_early_exit.encoder.attention_groups import attention_groups
from spacy_early_exit.encoder.layer_step import PackedRows, halt_and_copy_layer
from spacy_early_exit.encoder.model import EarlyExitEncoder
from spacy_early_exit.testing import tiny_backbone


def _slots(queries, keys, block, start, stop):
    width = -(-max(keys[start:stop]) // block) * block
    return (stop - start) * max(queries[start:stop]) * width


@pytest.mark.parametrize("seed", range(8))
def test_ranges_cover_every_row_once_in_order(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 70)
    queries = [rng.randint(0, 60) for _ in range(n)]
    keys = [q + rng.randint(1, 40) for q in queries]
    block = rng.choice([1, 16])
    found = attention_groups(queries, keys, block, overhead=rng.choice([0, 100, 4096]), max_groups=rng.choice([1, 2, 4]))
    assert found[0].start == 0 and found[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(found, found[1:]))
    for g in found:
        assert g.queries == max(queries[g.start:g.stop])
        assert g.keys == -(-max(keys[g.start:g.stop]) // block) * block


@pytest.mark.parametrize("seed", range(8))
def test_two_ranges_are_the_cheapest_single_cut(seed):
    rng = random.Random(100 + seed)
    n = rng.randint(2, 30)
    queries = [rng.randint(1, 40) for _ in range(n)]
    keys = [rng.randint(q, 60) for q in queries]
    found = attention_groups(queries, keys, 16, overhead=0, max_groups=2)
    whole = _slots(queries, keys, 16, 0, n)
    best = min([whole] + [_slots(queries, keys, 16, 0, c) + _slots(queries, keys, 16, c, n) for c in range(1, n)])
    assert sum(g.slots for g in found) == best


@pytest.mark.parametrize("seed", range(8))
def test_a_cut_is_made_only_where_it_pays_for_its_call(seed):
    rng = random.Random(200 + seed)
    queries = [rng.randint(1, 50) for _ in range(rng.randint(1, 64))]
    keys = [rng.randint(q, 80) for q in queries]
    overhead = rng.choice([0, 500, 4096, 50000])
    found = attention_groups(queries, keys, 16, overhead=overhead)
    one = _slots(queries, keys, 16, 0, len(queries))
    assert sum(g.slots for g in found) + overhead * (len(found) - 1) <= one
    assert len(found) <= groups_module.MAX_GROUPS


def test_spread_active_counts_are_cut_and_even_ones_are_not():
    # Eight rows still fully active beside 24 whose words mostly left.
    spread = attention_groups([40] * 8 + [3] * 24, [48] * 32, 16)
    assert [(g.start, g.stop, g.queries) for g in spread] == [(0, 8, 40), (8, 32, 3)]
    assert len(attention_groups([20] * 32, [30] * 32, 16)) == 1
    assert attention_groups([], []) == []
    assert len(attention_groups([40] * 8 + [3] * 24, [48] * 32, 16, max_groups=1)) == 1
    with pytest.raises(ValueError, match="query counts"):
        attention_groups([1, 2], [3])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_layer_gives_the_same_states_whatever_the_ranges(precision, monkeypatch):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    parts = encoder.layer_stack(precision).parts[0]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    lengths = [30, 29, 29, 27, 26, 20, 18, 12]
    hidden = torch.randn(len(lengths), 30, 32).to(dtype)
    present = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    # The first three rows keep every piece active; the others few.
    active = present.clone()
    active[3:, 3:] = False
    active[5, :] = False  # a live row whose words all left: keys only
    calls = []
    attention = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].shape) or attention(*a, **k))

    def run(max_groups):
        monkeypatch.setattr(groups_module, "MAX_GROUPS", max_groups)
        monkeypatch.setattr(groups_module, "GROUP_OVERHEAD", 0)
        calls.clear()
        with torch.no_grad():
            return halt_and_copy_layer(parts, hidden.clone(), present, PackedRows.from_mask(active), 4)

    whole = run(1)
    assert len(calls) == 1
    cut = run(4)
    assert len(calls) > 1
    assert max(shape[2] for shape in calls) == 30 and min(shape[2] for shape in calls) == 3
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if precision == "bf16" else {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(cut.float(), whole.float(), **tolerance)
    assert torch.equal(cut[~active], hidden[~active])


def test_training_runs_one_call(monkeypatch):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5)
    parts = encoder.layers[0]
    hidden = torch.randn(4, 10, 32, requires_grad=True)
    present = torch.ones(4, 10, dtype=torch.bool)
    active = present.clone()
    active[1:, 2:] = False
    calls = []
    attention = F.scaled_dot_product_attention
    monkeypatch.setattr(groups_module, "GROUP_OVERHEAD", 0)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or attention(*a, **k))
    out = halt_and_copy_layer(parts, hidden, present, PackedRows.from_mask(active), 4)
    out.sum().backward()
    assert calls == [1] and hidden.grad is not None
