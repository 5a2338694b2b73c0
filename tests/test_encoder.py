"""The torch encoder alone: full-depth equivalence, halt-and-copy, FLOPs, exit rules."""
import pytest
import torch

from spacy_early_exit.encoder.backbone import BackboneNotFound, load_pretrained, resolve_source
from spacy_early_exit.encoder.cost import CostModel
from spacy_early_exit.encoder.exits import ExitPolicy, normalized_entropy, static_thresholds, window_max
from spacy_early_exit.encoder.layer_step import PackedRows, halt_and_copy_layer
from spacy_early_exit.encoder.model import EarlyExitEncoder, EncoderInput
from spacy_early_exit.encoder.schedule import PieceOwners
from spacy_early_exit.testing import tiny_backbone

N_LABELS = 5


def make_batch(lengths, words, pad_id=0, seed=3):
    """Rows with given lengths; words[i] = first-piece columns; every word owns
    its first piece and the pieces up to the next word's first piece."""
    torch.manual_seed(seed)
    seq = max(lengths)
    ids = torch.randint(5, 100, (len(lengths), seq))
    n_words = max(len(w) for w in words)
    word_pieces = torch.full((len(lengths), n_words), -1)
    pr, pc, pw = [], [], []
    for i, (length, cols) in enumerate(zip(lengths, words)):
        ids[i, length:] = pad_id
        word_pieces[i, : len(cols)] = torch.tensor(cols)
        bounds = list(cols) + [length - 1]
        for w, col in enumerate(cols):
            for c in range(col, bounds[w + 1]):
                pr.append(i)
                pc.append(c)
                pw.append(w)
    return EncoderInput(ids, torch.tensor(lengths), word_pieces, torch.tensor(pr), torch.tensor(pc), torch.tensor(pw))


BATCH = dict(lengths=[12, 7, 3], words=[[1, 2, 4, 5, 8, 10], [1, 3, 5], [1]])


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_off_mode_matches_transformers_forward(family):
    backbone = tiny_backbone(family)
    encoder = EarlyExitEncoder(backbone, N_LABELS).eval()
    pad = 1 if family == "roberta" else 0
    batch = make_batch(**BATCH, pad_id=pad)
    mask = (torch.arange(batch.input_ids.shape[1])[None] < batch.lengths[:, None]).long()
    rows, cols = batch.word_mask.nonzero(as_tuple=True)
    with torch.no_grad():
        out = encoder(batch, ExitPolicy(mode="off"))
        hf = backbone(input_ids=batch.input_ids, attention_mask=mask).last_hidden_state
        expected = encoder.ramps[-1](hf[rows, batch.word_pieces[rows, cols]])
    torch.testing.assert_close(out.logits[rows, cols], expected, atol=1e-5, rtol=1e-4)
    assert (out.exit_layers[rows, cols] == encoder.num_layers).all()
    assert torch.equal(out.flops, out.full_flops)


def test_albert_shares_one_layer_across_depth():
    encoder = EarlyExitEncoder(tiny_backbone("albert"), N_LABELS)
    assert encoder.num_layers == 4
    assert all(parts.query is encoder.layers[0].query for parts in encoder.layers)


def test_halted_tokens_are_copied_but_stay_keys():
    backbone = tiny_backbone("bert")
    parts = EarlyExitEncoder(backbone, N_LABELS).eval().layers[0]
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 32)
    present = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    active = present.clone()
    active[0, 2] = active[1, 1] = False
    with torch.no_grad():
        out = halt_and_copy_layer(parts, hidden.clone(), present, PackedRows.from_mask(active), 4)
        # An active token's result equals a full layer's result for it: halted
        # tokens still serve as keys and values.
        full = halt_and_copy_layer(parts, hidden.clone(), present, PackedRows.from_mask(present), 4)
    assert torch.equal(out[0, 2], hidden[0, 2]) and torch.equal(out[1, 1], hidden[1, 1])
    torch.testing.assert_close(out[active], full[active])
    assert not torch.allclose(out[0, 3], hidden[0, 3])


def test_prediction_updates_the_states_in_place_and_training_does_not():
    parts = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).layers[0]
    hidden = torch.randn(2, 6, 32)
    present = torch.ones(2, 6, dtype=torch.bool)
    active = present.clone()
    active[0, 1] = False
    with torch.no_grad():
        states = hidden.clone()
        out = halt_and_copy_layer(parts, states, present, PackedRows.from_mask(active), 4)
    assert out is states  # no copy of the grid per layer at prediction
    leaf = hidden.clone().requires_grad_(True)
    out = halt_and_copy_layer(parts, leaf, present, PackedRows.from_mask(active), 4)
    assert out is not leaf and torch.equal(leaf, hidden)
    out.sum().backward()
    assert leaf.grad is not None and parts.query.weight.grad is not None


def test_everything_exits_after_layer_one_costs_one_layer():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    with torch.no_grad():
        out = encoder(batch, ExitPolicy(mode="tokee", threshold=1.0, window=1))
    assert (out.exit_layers[batch.word_mask] == 1).all()
    cost = CostModel(32, 64, N_LABELS)
    for i, length in enumerate(BATCH["lengths"]):
        words = len(BATCH["words"][i])
        expected = cost.layer_flops(length, length) + cost.ramp_flops(words)
        assert out.flops[i].item() == expected
        assert out.full_flops[i].item() == 4 * cost.layer_flops(length, length) + cost.ramp_flops(words)


def test_cost_model_matches_method_formula():
    d, f, n, q, c = 8, 32, 10, 3, 5
    cost = CostModel(d, f, c)
    macs = 2 * n * d * d + 2 * q * d * d + 2 * q * n * d + 2 * q * d * f
    assert cost.layer_flops(n, q) == 2 * macs
    assert cost.ramp_flops(4) == 2 * 4 * d * c
    assert cost.layer_flops(0, 0) == 0


def expected_flops(cost, batch, exit_layers, num_layers):
    """Recount a row's FLOPs from its words' exit layers alone."""
    totals = []
    for i, length in enumerate(batch.lengths.tolist()):
        cols = batch.word_pieces[i][batch.word_pieces[i] >= 0].tolist()
        layers = exit_layers[i, : len(cols)].tolist()
        owners = {}
        for r, c, w in zip(batch.piece_rows.tolist(), batch.piece_cols.tolist(), batch.piece_words.tolist()):
            if r == i:
                owners.setdefault(c, set()).add(w)
        total = 0
        for layer in range(1, max(layers) + 1):
            running = {w for w, e in enumerate(layers) if e >= layer}
            # A special (no owner) runs while its row does; a piece while any owner does.
            active = sum(1 for c in range(length) if owners.get(c, running) & running)
            total += cost.layer_flops(length, active) + cost.ramp_flops(len(running))
        totals.append(total)
    return totals


def test_partial_exits_flops_follow_exit_layers():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    with torch.no_grad():
        layer_logits = encoder(batch, all_layers=True).layer_logits
        threshold = float(normalized_entropy(torch.cat(layer_logits)).median())
        out = encoder(batch, ExitPolicy(mode="tokee", threshold=threshold, window=0))
    layers = out.exit_layers[batch.word_mask]
    assert layers.min() == 1 and layers.max() == encoder.num_layers, "the test needs mixed exits"
    assert out.flops.tolist() == expected_flops(encoder.cost, batch, out.exit_layers, encoder.num_layers)
    assert (out.flops < out.full_flops).any()


def test_window_max_and_sentee():
    values = torch.tensor([[1.0, 9.0, 2.0, 0.0, 3.0]])
    assert window_max(values, 0).tolist() == values.tolist()
    assert window_max(values, 1).tolist() == [[9.0, 9.0, 9.0, 3.0, 3.0]]
    assert window_max(values, 5).tolist() == [[9.0] * 5]
    assert window_max(values, None).tolist() == [[9.0] * 5]


def test_sentee_exits_whole_rows_tokee_exits_tokens():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    with torch.no_grad():
        first = encoder.ramps[0]
        # Pick a threshold that splits layer-1 uncertainties of row 0.
        probe = encoder(batch, ExitPolicy(mode="off"), all_layers=True).layer_logits[0]
        u = normalized_entropy(probe)[:6]
        threshold = float(u.sort().values[3])
        sentee = encoder(batch, ExitPolicy(mode="sentee", threshold=threshold))
        tokee = encoder(batch, ExitPolicy(mode="tokee", threshold=threshold, window=0))
    assert first is encoder.ramps[0]
    row = sentee.exit_layers[0, :6]
    assert (row == row[0]).all()
    assert (tokee.exit_layers[0, :6] == 1).sum() == 3


def test_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    u = normalized_entropy(logits)
    assert torch.isfinite(u).all()
    assert u[0].item() == pytest.approx(0.0, abs=1e-6) and u[1].item() == pytest.approx(1.0)
    assert normalized_entropy(logits, temperature=1e5)[0] > 0.5


def test_temperatures_change_exits_not_predictions():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    with torch.no_grad():
        cold = encoder(batch, ExitPolicy(mode="tokee", threshold=0.9, window=0, temperatures=(0.01,) * 4))
        hot = encoder(batch, ExitPolicy(mode="tokee", threshold=0.9, window=0, temperatures=(100.0,) * 4))
    mask = batch.word_mask
    assert (cold.exit_layers[mask] == 1).all()
    assert (hot.exit_layers[mask] == 4).all()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mode": "fast"}, "exit_mode"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "0.1"}, "threshold"),
        ({"window": -1}, "window"),
        ({"window": 1.5}, "window"),
        ({"thresholds": (0.1, 2.0)}, "thresholds"),
        ({"temperatures": (1.0, 0.0)}, "temperatures"),
    ],
)
def test_policy_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ExitPolicy(**kwargs)


def test_per_layer_lists_must_match_depth():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    with pytest.raises(ValueError, match="temperatures"):
        encoder(make_batch(**BATCH), ExitPolicy(temperatures=(1.0, 1.0)))


def test_training_pass_returns_every_layer_with_gradients():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).train()
    out = encoder(make_batch(**BATCH), all_layers=True)
    assert len(out.layer_logits) == 4
    assert out.layer_logits[0].shape == (10, N_LABELS)
    sum(l.sum() for l in out.layer_logits).backward()
    # Every layer's loss reaches the input embeddings and its own off-ramp.
    assert encoder.backbone.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    for ramp in encoder.ramps:
        assert ramp[1].weight.grad.abs().sum() > 0


def test_missing_backbones_fail_with_what_was_tried(tmp_path):
    with pytest.raises(BackboneNotFound, match="no_such_module_xyz"):
        resolve_source("pkg:no_such_module_xyz")
    with pytest.raises(BackboneNotFound, match="no such local directory"):
        resolve_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneNotFound, match="config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_local_directory_loads_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_pretrained(str(tiny_model_dir))
    assert tokenizer.is_fast and model.config.num_hidden_layers == 4


def test_static_thresholds_cut_the_model_after_one_layer():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    with torch.no_grad():
        out = encoder(batch, ExitPolicy(mode="tokee", thresholds=static_thresholds(2, 4)))
        # Uniform logits (entropy exactly 1) still leave at threshold 1.0.
        zero = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
        for ramp in zero.ramps:
            torch.nn.init.zeros_(ramp[1].weight)
            torch.nn.init.zeros_(ramp[1].bias)
        flat = zero(batch, ExitPolicy(mode="tokee", threshold=1.0))
    assert (out.exit_layers[batch.word_mask] == 2).all()
    assert (flat.exit_layers[batch.word_mask] == 1).all()
    with pytest.raises(ValueError, match="static"):
        static_thresholds(5, 4)


def reference_active_pieces(batch, word_active):
    """The rule, one piece at a time: a piece runs while any of its words runs;
    a piece of no word (a special) while any word of its row runs."""
    n_rows, seq = batch.input_ids.shape
    out = torch.zeros(n_rows, seq, dtype=torch.bool)
    owned = {}
    for r, c, w in zip(batch.piece_rows.tolist(), batch.piece_cols.tolist(), batch.piece_words.tolist()):
        owned.setdefault((r, c), []).append(w)
    for r in range(n_rows):
        for c in range(int(batch.lengths[r])):
            words = owned.get((r, c))
            out[r, c] = any(word_active[r, w] for w in words) if words else bool(word_active[r].any())
    return out


@pytest.mark.parametrize("share", [False, True])
def test_piece_map_follows_word_activity(share):
    batch = make_batch(**BATCH)
    if share:
        # Piece (0, 3) belongs to word 1 already; let word 2 share it, as
        # when a tokenizer merges across a token boundary.
        batch.piece_rows = torch.cat([batch.piece_rows, torch.tensor([0])])
        batch.piece_cols = torch.cat([batch.piece_cols, torch.tensor([3])])
        batch.piece_words = torch.cat([batch.piece_words, torch.tensor([2])])
    seq = batch.input_ids.shape[1]
    real = torch.arange(seq)[None, :] < batch.lengths[:, None]
    owners = PieceOwners(batch.piece_rows, batch.piece_cols, batch.piece_words, real, batch.word_mask.shape[1])
    assert owners.shared is share
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        word_active = batch.word_mask & (torch.rand(batch.word_mask.shape, generator=generator) < 0.5)
        assert torch.equal(owners.active(word_active), reference_active_pieces(batch, word_active))
    only_word_2 = torch.zeros_like(batch.word_mask)
    only_word_2[0, 2] = True
    assert bool(owners.active(only_word_2)[0, 3]) is share


def test_shared_piece_runs_until_both_words_exit():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), N_LABELS).eval()
    batch = make_batch(**BATCH)
    batch.piece_rows = torch.cat([batch.piece_rows, torch.tensor([0])])
    batch.piece_cols = torch.cat([batch.piece_cols, torch.tensor([3])])
    batch.piece_words = torch.cat([batch.piece_words, torch.tensor([2])])
    with torch.no_grad():
        layer_logits = encoder(batch, all_layers=True).layer_logits
        threshold = float(normalized_entropy(torch.cat(layer_logits)).median())
        out = encoder(batch, ExitPolicy(mode="tokee", threshold=threshold, window=0))
    assert out.flops.tolist() == expected_flops(encoder.cost, batch, out.exit_layers, encoder.num_layers)
