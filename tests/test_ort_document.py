"""The one-call path of precision "int8-ort" at batch size 1
(encoder/ort_document.py, encoder/document_pass.py): a sequence's layers,
off-ramps and exit rule in one ONNX Runtime call give what the eager loop
over the per-layer sessions gives."""
import copy
import pickle
import warnings

import pytest
import torch

from spacy_early_exit.encoder import document_pass, ort_document, quantized_linear
from spacy_early_exit.encoder.onnx_graph import GraphBuilder, onnx_type
from spacy_early_exit.encoder.quantized_linear import Int8Linear
from spacy_early_exit.encoder.exits import ExitPolicy
from spacy_early_exit.encoder.model import EarlyExitEncoder, EncoderInput
from spacy_early_exit.testing import tiny_backbone

onnxruntime = pytest.importorskip("onnxruntime")


def one_sequence(n_pieces: int, seed: int = 0, shared_piece: bool = False, empty_word: bool = False) -> EncoderInput:
    """A [CLS] w1 .. wn [SEP] row; the last word gets two pieces (a word's
    first piece is not all it has), `shared_piece` gives one piece to two
    words, `empty_word` adds a word without pieces."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (1, n_pieces), generator=generator)
    pairs = [(col, word) for word, col in enumerate(range(1, n_pieces - 2))]
    last_word = pairs[-1][1]
    pairs.append((n_pieces - 2, last_word))
    if shared_piece:
        pairs.append((n_pieces - 2, last_word - 1))
    first = sorted({word: min(c for c, w in pairs if w == word) for _, word in pairs}.items())
    word_pieces = [col for _, col in first] + ([-1] if empty_word else [])
    cols, words = zip(*pairs)
    return EncoderInput(
        input_ids=ids, lengths=torch.tensor([n_pieces]), word_pieces=torch.tensor([word_pieces]),
        piece_rows=torch.zeros(len(pairs), dtype=torch.long), piece_cols=torch.tensor(cols),
        piece_words=torch.tensor(words),
    )


def sharp_encoder(family: str = "bert", **kwargs) -> EarlyExitEncoder:
    """A tiny random encoder whose off-ramps are confident enough for words
    to leave at every depth (a random off-ramp's entropy is near 1), with
    biases that are not zero (a fresh transformers model's are)."""
    encoder = EarlyExitEncoder(tiny_backbone(family, layers=4), **(kwargs or {"n_classes": 5})).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for ramp in encoder.ramps:
            ramp[-1].weight.mul_(4.0)
        for module in encoder.backbone.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return encoder


def both_paths(encoder: EarlyExitEncoder, batch: EncoderInput, policy: ExitPolicy):
    """The eager loop's output and the one-call path's, and which path ran."""
    calls = []
    real_run = document_pass.DocumentCache.run

    def counted(self, *args):
        found = real_run(self, *args)
        calls.append(found is not None)
        return found

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(document_pass.DocumentCache, "run", counted)
        encoder.one_call_documents = False
        eager = encoder(batch, policy)
        encoder.one_call_documents = True
        fused = encoder(batch, policy)
    return eager, fused, calls


def assert_same(eager, fused):
    assert torch.equal(eager.exit_layers, fused.exit_layers)
    assert torch.equal(eager.flops, fused.flops) and torch.equal(eager.full_flops, fused.full_flops)
    assert eager.logits.shape == fused.logits.shape and eager.logits.dtype == fused.logits.dtype
    # The same integers; float sums in another order move a logit by far less
    # than one quantization step would.
    assert float((eager.logits - fused.logits).abs().max()) < 1e-3


@pytest.mark.parametrize("precision", ["int8-ort", "fp32-ort"])
@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
@pytest.mark.parametrize("policy", [
    dict(mode="tokee", threshold=0.5, window=1),
    dict(mode="tokee", threshold=0.4, window=0),
    dict(mode="tokee", threshold=0.6, window=2, thresholds=(0.0, 0.6, 0.8, 0.6)),
    dict(mode="sentee", threshold=0.6),
    dict(mode="tokee", threshold=0.0, thresholds=(0.0, 1.0, 1.0, 1.0)),  # a static cut after layer 2
    dict(mode="tokee", threshold=0.4, window=1, temperatures=(0.7, 1.5, 1.0, 3.0)),
    dict(mode="off"),
])
def test_one_call_gives_what_the_eager_loop_gives(family, policy, precision):
    encoder = sharp_encoder(family)
    exits_seen = set()
    for seed, n_pieces in enumerate((6, 11, 17)):
        eager, fused, calls = both_paths(encoder, one_sequence(n_pieces, seed), ExitPolicy(**policy, precision=precision))
        assert calls == [True]
        assert_same(eager, fused)
        exits_seen.update(fused.exit_layers[0].tolist())
    if policy["mode"] == "off":
        assert exits_seen == {4}
    elif policy.get("thresholds") == (0.0, 1.0, 1.0, 1.0):
        assert exits_seen == {2}
    else:
        # Words left at different depths: the rule itself was compared.
        assert len(exits_seen) > 1, exits_seen


def test_one_product_is_the_int8_products_arithmetic():
    # The graphs' building block against the torch int8 Linear, with a bias
    # (an ONNX Runtime input that is silently dropped would show here).
    from onnx import helper

    linear = torch.nn.Linear(48, 40)
    with torch.no_grad():
        linear.bias.copy_(torch.randn(40))
    x = torch.randn(6, 48) * 3
    g = GraphBuilder()
    g.nodes.append(helper.make_node("Identity", [g.linear("x", [linear])], ["y"]))
    model = g.model("product", [helper.make_tensor_value_info("x", onnx_type("FLOAT"), ["rows", 48])],
                    [helper.make_tensor_value_info("y", onnx_type("FLOAT"), ["rows", 40])])
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["y"], {"x": x.numpy()})[0])
    with torch.no_grad():
        want = Int8Linear(linear)(x)
    assert float((got - want).abs().max()) < 1e-5


def test_two_heads_with_their_own_temperatures():
    encoder = sharp_encoder(head_sizes=(5, 3))
    policy = ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort",
                        head_temperatures=((1.0, 0.5, 2.0, 1.0), None), temperatures=(1.5, 1.0, 1.0, 0.7))
    exits_seen = set()
    for seed in range(3):
        eager, fused, calls = both_paths(encoder, one_sequence(12, seed), policy)
        assert calls == [True]
        assert_same(eager, fused)
        exits_seen.update(fused.exit_layers[0].tolist())
    assert len(exits_seen) > 1, exits_seen


def test_a_word_without_pieces_keeps_exit_0_and_zero_logits():
    encoder = sharp_encoder()
    eager, fused, calls = both_paths(encoder, one_sequence(9, empty_word=True),
                                     ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"))
    assert calls == [True]
    assert_same(eager, fused)
    assert int(fused.exit_layers[0, -1]) == 0 and float(fused.logits[0, -1].abs().sum()) == 0.0


def test_a_piece_of_two_words_runs_the_eager_loop():
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=4), 5).eval()
    eager, fused, calls = both_paths(encoder, one_sequence(10, shared_piece=True),
                                     ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"))
    assert calls == [False]
    assert torch.equal(eager.logits, fused.logits) and torch.equal(eager.exit_layers, fused.exit_layers)


def test_only_single_sequences_in_prediction_take_it():
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=4), 5).eval()
    single = one_sequence(8)
    two = EncoderInput(
        input_ids=single.input_ids.repeat(2, 1), lengths=single.lengths.repeat(2),
        word_pieces=single.word_pieces.repeat(2, 1),
        piece_rows=torch.cat([single.piece_rows, single.piece_rows + 1]),
        piece_cols=single.piece_cols.repeat(2), piece_words=single.piece_words.repeat(2),
    )
    for batch, precision, want in ((two, "int8-ort", []), (single, "int8", []), (single, "int8-ort", [True])):
        *_, calls = both_paths(encoder, batch, ExitPolicy(mode="tokee", threshold=0.5, window=1, precision=precision))
        assert calls == want, (precision, batch.input_ids.shape)
    with torch.no_grad():
        out = encoder(single, ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"), word_states=True)
    assert out.word_states is not None  # the eager loop, which returns states


def test_graphs_are_kept_per_setting_and_made_again_after_a_weights_change():
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=4), 5).eval()
    batch = one_sequence(9)
    cache = encoder.document_cache
    with torch.no_grad():
        for window in (0, 1, 2):
            encoder(batch, ExitPolicy(mode="tokee", threshold=0.5, window=window, precision="int8-ort"))
        encoder(batch, ExitPolicy(mode="tokee", threshold=0.4, window=2, precision="int8-ort"))  # the same graph
        assert len(cache._graphs) == 3
        for window in range(3, document_pass.MAX_GRAPHS + 1):
            encoder(batch, ExitPolicy(mode="tokee", threshold=0.5, window=window, precision="int8-ort"))
        assert len(cache._graphs) == document_pass.MAX_GRAPHS
        policy = ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort")
        before = encoder(batch, policy)
        encoder.ramps[-1][-1].bias.add_(torch.randn_like(encoder.ramps[-1][-1].bias) * 3)
        encoder.weights_changed()
        after = encoder(batch, policy)
    assert len(cache._graphs) == 1
    eager, fused, _ = both_paths(encoder, batch, policy)
    assert_same(eager, fused)
    assert not torch.equal(before.logits, after.logits)


def test_settings_that_alternate_get_their_own_thresholds_and_temperatures():
    # The cache keeps the last setting's per-layer inputs: switching back and
    # forth must give each setting what a fresh encoder gives it.
    encoder = sharp_encoder()
    batch = one_sequence(12, seed=4)
    loose = ExitPolicy(mode="tokee", threshold=0.9, window=1, precision="int8-ort")
    strict = ExitPolicy(mode="tokee", thresholds=(0.0, 0.05, 0.05, 0.05), window=1, precision="int8-ort",
                        temperatures=(1.0, 2.0, 2.0, 2.0))
    with torch.no_grad():
        alone = {policy: copy.deepcopy(encoder)(batch, policy) for policy in (loose, strict)}
        turns = [(policy, encoder(batch, policy)) for policy in (loose, strict, loose, strict)]
    for policy, out in turns:
        assert torch.equal(out.exit_layers, alone[policy].exit_layers)
        assert torch.equal(out.flops, alone[policy].flops)
    assert not torch.equal(alone[loose].exit_layers, alone[strict].exit_layers)


def test_copies_and_pickles_start_without_graphs():
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=2), 5).eval()
    with torch.no_grad():
        encoder(one_sequence(7), ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"))
    assert len(encoder.document_cache._graphs) == 1
    for other in (copy.deepcopy(encoder), pickle.loads(pickle.dumps(encoder))):
        assert len(other.document_cache._graphs) == 0
        with torch.no_grad():
            out = other(one_sequence(7), ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"))
        assert out.exit_layers.shape == (1, 4)


def test_a_graph_that_cannot_be_made_warns_once_and_runs_the_eager_loop(monkeypatch):
    monkeypatch.setattr(quantized_linear, "_warned", set())

    def broken(*args, **kwargs):
        raise ValueError("no graph today")

    monkeypatch.setattr(document_pass, "DocumentGraph", broken)
    encoder = EarlyExitEncoder(tiny_backbone("bert", layers=4), 5).eval()
    policy = ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort")
    with pytest.warns(RuntimeWarning, match="no graph today") as record:
        eager, fused, calls = both_paths(encoder, one_sequence(9), policy)
        both_paths(encoder, one_sequence(9), policy)
    assert len(record) == 1 and calls == [False]
    assert torch.equal(eager.logits, fused.logits)


def test_the_embeddings_run_in_the_graph_where_they_match_torch():
    assert ort_document.embedding_offset(tiny_backbone("bert")) == 0
    roberta = tiny_backbone("roberta")
    assert ort_document.embedding_offset(roberta) == roberta.embeddings.padding_idx + 1
    assert ort_document.embedding_offset(tiny_backbone("albert")) == 0
    # A block the graph does not reproduce (no absolute positions) is embedded in torch.
    odd = tiny_backbone("bert")
    odd.embeddings.position_embedding_type = "relative_key"
    assert ort_document.embedding_offset(odd) is None
    encoder = EarlyExitEncoder(odd, 5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        eager, fused, calls = both_paths(encoder, one_sequence(9),
                                         ExitPolicy(mode="tokee", threshold=0.5, window=1, precision="int8-ort"))
    assert calls == [True]
    assert_same(eager, fused)
    assert not next(iter(encoder.document_cache._graphs.values())).embeds


def test_a_pipeline_sentence_at_batch_size_1_goes_straight_to_the_graph(trained_ner, monkeypatch):
    # Architecture._predict_rows hands a lone one-row doc to the shim's
    # predict_sequence (numpy in and out, no thinc wrapper); anything else,
    # and a precision without the graph, goes through the shim's predict.
    from spacy_early_exit.layers.architecture import get_shim
    from spacy_early_exit.layers.shim import EarlyExitShim
    from spacy_early_exit.tools.evaluate import exit_settings

    wrapped = []
    real_predict = EarlyExitShim.predict

    def counted(self, inputs):
        wrapped.append(inputs.args[0].input_ids.shape[0])
        return real_predict(self, inputs)

    monkeypatch.setattr(EarlyExitShim, "predict", counted)
    encoder = get_shim(trained_ner.get_pipe("tokee_ner").model).encoder
    short = ["John Smith lives in New York .", "Google opened an office in Paris and London .", "London"]
    long_text = " ".join(["John Smith lives in New York and works for Google ."] * 12)

    def run(texts, **fields):
        with exit_settings(trained_ner, {"precision": "int8-ort", **fields}):
            docs = [trained_ner(text) for text in texts]
        return [(doc._.early_exit["tokee_ner"]["exit_layers"], doc._.early_exit["tokee_ner"]["flops"],
                 [(e.start, e.end, e.label_) for e in doc.ents]) for doc in docs]

    fast = run(short)
    assert wrapped == []
    encoder.one_call_documents = False
    try:
        eager = run(short)
    finally:
        encoder.one_call_documents = True
    assert wrapped == [1, 1, 1]
    assert fast == eager and len({layer for sig in fast for layer in sig[0]}) > 1
    del wrapped[:]
    # A static cut exits where it says on this path too.
    assert {layer for sig in run(short[:1], thresholds=[0.0, 1.0, 1.0, 1.0]) for layer in sig[0]} == {2}
    assert wrapped == []
    run([long_text])  # windowed: several rows in one call
    assert wrapped and wrapped[0] > 1
    del wrapped[:]
    with exit_settings(trained_ner, {"precision": "int8"}):
        trained_ner(short[0])
    assert wrapped == [1]
