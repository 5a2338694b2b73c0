"""precision "int8-ort": each layer's dense work as one ONNX Runtime call
(encoder/ort_layer.py), the same int8 arithmetic as the torch int8 stack."""
import dataclasses
import warnings

import pytest
import torch

from spacy_early_exit.encoder import ort_grids, ort_layer, precision as precision_module, quantized_linear
from spacy_early_exit.encoder.exits import ExitPolicy
from spacy_early_exit.encoder.layer_step import PackedRows, halt_and_copy_layer
from spacy_early_exit.encoder.model import EarlyExitEncoder, EncoderInput
from spacy_early_exit.testing import tiny_backbone

pytest.importorskip("onnxruntime")


def mixed_batch(width: int, seed: int = 0):
    """The general case: rows of different lengths, some pieces halted, and a
    row whose words have all exited (neither keys nor queries any more)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, width, generator=generator)
    present = torch.zeros(3, 11, dtype=torch.bool)
    present[0, :11] = True
    present[2, :6] = True
    active = present & (torch.rand(3, 11, generator=generator) < 0.6)
    active[0, 0] = active[2, 0] = True
    return hidden, present, PackedRows(active)


@pytest.mark.parametrize("precision", ["int8-ort", "fp32-ort"])
@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
@pytest.mark.parametrize("case", ["dense", "one row", "mixed"])
def test_the_onnx_layer_computes_what_the_torch_layer_does(family, case, precision):
    encoder = EarlyExitEncoder(tiny_backbone(family), 5).eval()
    torch_stack, ort_stack = encoder.layer_stack(precision[:4]), encoder.layer_stack(precision)
    assert ort_stack.precision == precision and all(p.dense_step is not None for p in ort_stack.parts)
    width = encoder.spec.hidden_size
    if case == "dense":
        hidden = torch.randn(2, 7, width)
        present = torch.ones(2, 7, dtype=torch.bool)
        active = PackedRows(present)
    elif case == "one row":
        hidden = torch.randn(1, 9, width)
        present = torch.ones(1, 9, dtype=torch.bool)
        active = PackedRows(present & (torch.arange(9) % 3 != 1))
    else:
        hidden, present, active = mixed_batch(width)
    heads = encoder.spec.num_heads
    with torch.no_grad():
        for eager, fused in zip(torch_stack.parts, ort_stack.parts):
            want = halt_and_copy_layer(eager, hidden.clone(), present, active, heads)
            got = halt_and_copy_layer(fused, hidden.clone(), present, active, heads)
            # The same integers (int8); float sums in another order can flip
            # one activation's rounding, which moves a state by about 1e-2.
            assert float((want - got).abs().max()) < (ort_layer.PROBE_TOLERANCE if precision == "int8-ort" else 1e-4)
            assert float((want - got).abs().mean()) < 1e-4
            hidden = want
    # Halted pieces are copied, untouched.
    frozen = present & ~active.mask
    assert torch.equal(got[frozen], want[frozen])


def many_rows(width: int, rows: int = 9, seed: int = 0):
    """Rows of spread lengths and active counts, as a batch looks after
    exits: worth several attention groups once a group costs nothing."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [12, 11, 11, 10, 9, 9, 7, 5, 3][:rows]
    hidden = torch.randn(rows, 12, width, generator=generator)
    present = torch.zeros(rows, 12, dtype=torch.bool)
    for row, n in enumerate(lengths):
        present[row, :n] = True
    keep = torch.rand(rows, 12, generator=generator) < torch.linspace(0.95, 0.1, rows)[:, None]
    active = present & keep
    active[:, 0] = True
    return hidden, present, PackedRows(active)


@pytest.mark.parametrize("precision", ["int8-ort", "fp32-ort"])
def test_attention_over_several_row_groups_computes_what_torch_does(monkeypatch, precision):
    monkeypatch.setattr(ort_grids, "GROUP_OVERHEAD", 0)
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    torch_stack, ort_stack = encoder.layer_stack(precision[:4]), encoder.layer_stack(precision)
    hidden, present, active = many_rows(encoder.spec.hidden_size)
    seen = []
    feed = ort_layer.grouped_feed
    monkeypatch.setattr(ort_layer, "grouped_feed", lambda *a, **k: seen.append(feed(*a, **k)) or seen[-1])
    with torch.no_grad():
        for eager, fused in zip(torch_stack.parts, ort_stack.parts):
            want = halt_and_copy_layer(eager, hidden.clone(), present, active, encoder.spec.num_heads)
            got = halt_and_copy_layer(fused, hidden.clone(), present, active, encoder.spec.num_heads)
            assert float((want - got).abs().max()) < (ort_layer.PROBE_TOLERANCE if precision == "int8-ort" else 1e-4)
            hidden = want
    # Every group of the graph held real rows.
    used = [sum(f[f"q_grid_{g}"].shape[0] for g in range(ort_grids.ATTENTION_GROUPS)) for f in seen]
    assert seen and all(n == 9 for n in used)


def test_one_grid_and_several_groups_give_the_same_states(monkeypatch):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    parts = encoder.layers[0]
    one, three = (ort_layer.OrtLayer(parts, encoder.spec.num_heads, "int8", groups) for groups in (1, 3))
    hidden, present, active = many_rows(encoder.spec.hidden_size)
    monkeypatch.setattr(ort_grids, "GROUP_OVERHEAD", 0)
    states = []
    for layer in (one, three):
        with torch.no_grad():
            states.append(halt_and_copy_layer(dataclasses.replace(parts, dense_step=layer), hidden.clone(), present,
                                              active, encoder.spec.num_heads))
    assert float((states[0] - states[1]).abs().max()) < 1e-5


def test_row_ranges_cover_the_rows_and_cut_where_it_pays():
    import numpy as np

    generator = np.random.default_rng(0)
    for _ in range(50):
        n = int(generator.integers(1, 12))
        queries = np.sort(generator.integers(0, 40, n))[::-1].copy()
        keys = generator.integers(1, 60, n)
        for groups in (1, 2, 3, 4):
            ranges = ort_grids.row_ranges(queries, keys, groups, 0)
            assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) <= groups
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        def cost(parts):
            return sum((b - a) * queries[a] * keys[a:b].max() for a, b in parts)
        if n >= 2:
            best = min(cost([(0, i), (i, n)]) for i in range(1, n))
            two = ort_grids.row_ranges(queries, keys, 2, 0)
            assert cost(two) == min(best, cost([(0, n)]))
        # A cut that saves less than it costs is not made.
        assert ort_grids.row_ranges(queries, keys, 4, float(cost([(0, n)]))) == [(0, n)]


def test_exits_and_tags_match_the_torch_int8_stack():
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=4), 5).eval()
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (4, 13))
    lengths = torch.tensor([13, 9, 5, 11])
    for row, n in enumerate(lengths.tolist()):
        ids[row, n:] = 0
    word_pieces = torch.full((4, 12), -1)
    pairs = []
    for row, n in enumerate(lengths.tolist()):
        for word, col in enumerate(range(1, n - 1)):
            word_pieces[row, word] = col
            pairs.append((row, col, word))
    rows, cols, words = (torch.tensor(x) for x in zip(*pairs))
    batch = EncoderInput(ids, lengths, word_pieces, rows, cols, words)
    mask = batch.word_mask
    for threshold in (0.3, 0.6, 0.9):
        policy = dict(mode="tokee", threshold=threshold, window=1)
        with torch.no_grad():
            eager = encoder(batch, ExitPolicy(**policy, precision="int8"))
            fused = encoder(batch, ExitPolicy(**policy, precision="int8-ort"))
        agree = (eager.exit_layers[mask] == fused.exit_layers[mask]).float().mean()
        assert float(agree) >= 0.99
        tags = (eager.logits[mask].argmax(-1) == fused.logits[mask].argmax(-1)).float().mean()
        assert float(tags) >= 0.99
        assert torch.equal(eager.flops, fused.flops) or float(agree) < 1.0


def test_the_activation_is_recognised_by_value():
    assert ort_layer.activation_name(torch.nn.functional.gelu) == "Gelu"
    assert ort_layer.activation_name(lambda x: torch.nn.functional.gelu(x, approximate="tanh")) == "FastGelu"
    assert ort_layer.activation_name(torch.relu) is None


def fresh_warnings(monkeypatch):
    monkeypatch.setattr(quantized_linear, "_warned", set())


def test_an_unknown_activation_falls_back_to_torch_int8_with_one_warning(monkeypatch):
    fresh_warnings(monkeypatch)
    backbone = tiny_backbone("bert")
    for layer in backbone.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.ReLU()
    encoder = EarlyExitEncoder(backbone, 5).eval()
    with pytest.warns(RuntimeWarning, match="int8-ort.*torch int8") as record:
        stack = encoder.layer_stack("int8-ort")
        encoder.precision_cache.clear()
        encoder.layer_stack("int8-ort")
    assert len(record) == 1
    assert stack.precision == "int8" and all(p.dense_step is None for p in stack.parts)


def test_missing_onnxruntime_falls_back_to_torch_int8_with_one_warning(monkeypatch):
    fresh_warnings(monkeypatch)
    monkeypatch.setattr(precision_module, "onnxruntime_missing", lambda: "the onnxruntime package is not installed")
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    with pytest.warns(RuntimeWarning, match="onnxruntime package is not installed") as record:
        stack = encoder.layer_stack("int8-ort")
        encoder.layer_stack("int8-ort")
    assert len(record) == 1 and stack.precision == "int8"


def test_a_session_that_disagrees_with_torch_is_not_used(monkeypatch):
    # What a saturating int8 kernel would look like: the probe catches it.
    fresh_warnings(monkeypatch)
    monkeypatch.setattr(ort_layer, "PROBE_TOLERANCE", -1.0)
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    with pytest.warns(RuntimeWarning, match="differs from the torch int8 layer"):
        stack = encoder.layer_stack("int8-ort")
    assert stack.precision == "int8"


def test_this_machine_runs_it_without_a_warning(monkeypatch):
    fresh_warnings(monkeypatch)
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert encoder.layer_stack("int8-ort").precision == "int8-ort"


def test_sessions_run_on_the_calling_thread():
    # Six per-session pools beside torch's threads thrashed 2 cores; see
    # ort_layer.session_options. A change of torch's threads needs no new stack.
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        stack = encoder.layer_stack("int8-ort")
        torch.set_num_threads(1)
        assert encoder.layer_stack("int8-ort") is stack
    finally:
        torch.set_num_threads(threads)
    options = stack.parts[0].dense_step.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_the_graph_is_built_from_the_current_weights():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    before = encoder.layer_stack("int8-ort")
    with torch.no_grad():
        # Not a constant shift: the LayerNorm after it would cancel that.
        encoder.layers[0].ffn_out.bias.add_(torch.randn_like(encoder.layers[0].ffn_out.bias))
    encoder.weights_changed()
    after = encoder.layer_stack("int8-ort")
    assert after is not before
    hidden = torch.randn(1, 5, encoder.spec.hidden_size)
    present = torch.ones(1, 5, dtype=torch.bool)
    rows = PackedRows(present)
    with torch.no_grad():
        old = halt_and_copy_layer(before.parts[0], hidden.clone(), present, rows, encoder.spec.num_heads)
        new = halt_and_copy_layer(after.parts[0], hidden.clone(), present, rows, encoder.spec.num_heads)
        want = halt_and_copy_layer(encoder.layer_stack("int8").parts[0], hidden.clone(), present, rows,
                                   encoder.spec.num_heads)
    assert float((new - want).abs().max()) < ort_layer.PROBE_TOLERANCE
    assert float((new - old).abs().max()) > 0.01


MULTIPROCESS_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from spacy_early_exit.testing import NER_DATA, make_ner_nlp, save_tiny_backbone

nlp = make_ner_nlp(save_tiny_backbone(Path({tmp!r})), steps=3, threshold=0.5, window=1, precision="int8-ort")
texts = [t for t, _ in NER_DATA] * 10 + [" ".join(["John lives in London ."] * 40)]

def out(docs):
    return [(d.text, [(e.start, e.end, e.label_) for e in d.ents], d._.early_exit) for d in docs]

# The parent's sessions exist before spaCy forks its workers.
one = out(nlp.pipe(texts, batch_size=4))
two = out(nlp.pipe(texts, batch_size=4, n_process=2))
assert one == two, "n_process=2 differs from one process"
print("OK", len(two))
"""


@pytest.mark.slow
def test_n_process_2_gives_what_one_process_does(tmp_path):
    from test_hardening import TESTS, run_script

    result = run_script(MULTIPROCESS_SCRIPT.format(root=str(TESTS.parent), tmp=str(tmp_path / "bb")), timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "OK 41" in result.stdout


def test_a_shared_encoder_runs_int8_ort_like_int8(tiny_model_dir):
    from spacy_early_exit.testing import NER_DATA, make_shared_nlp

    nlp = make_shared_nlp(tiny_model_dir, steps=3, threshold=0.5, window=1)
    transformer = nlp.get_pipe("tokee_transformer")
    texts = [t for t, _ in NER_DATA] * 3

    def run(precision):
        with transformer.using(precision=precision):
            docs = list(nlp.pipe(texts, batch_size=4))
        exits = [layer for d in docs for layer in d._.early_exit["tokee_transformer"]["exit_layers"]]
        labels = [(t.ent_iob_, t.ent_type_, t.tag_) for d in docs for t in d]
        return exits, labels

    (exits, labels), (ort_exits, ort_labels) = run("int8"), run("int8-ort")
    assert len(exits) == len(ort_exits) > 0
    assert sum(a == b for a, b in zip(exits, ort_exits)) / len(exits) >= 0.99
    assert sum(a == b for a, b in zip(labels, ort_labels)) / len(labels) >= 0.99
