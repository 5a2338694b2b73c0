"""precision = "fp32" | "bf16" | "int8": reduced-precision prediction on fp32 weights."""
import copy
import dataclasses
import warnings

import numpy
import pytest
import spacy
import torch

from spacy_early_exit.encoder import precision as precision_module
from spacy_early_exit.encoder import quantized_linear
from spacy_early_exit.encoder.layer_step import PackedRows, halt_and_copy_layer
from spacy_early_exit.encoder.exits import ExitPolicy, normalized_entropy
from spacy_early_exit.encoder.model import EarlyExitEncoder, EncoderInput
from spacy_early_exit.encoder.precision import LayerStack
from spacy_early_exit.layers.architecture import full_depth_logits, get_shim
from spacy_early_exit.testing import NER_DATA, make_ner_nlp, ner_examples, tiny_backbone
from spacy_early_exit.tools.evaluate import exit_settings

REDUCED = ["bf16", "int8", "int8-ort", "fp32-ort"]
TEXTS = [t for t, _ in NER_DATA] + [
    "London",
    "the company said new york will have three one two",
    "John and Mary and Google and Apple in Paris, London and New York were named by Smith .",
    "see http://" + "/".join(["abc"] * 60) + " now",  # longer than the position limit
]
SHORT = TEXTS[:7]  # one encoder row each
TEMPERATURE = 0.25


@pytest.fixture(scope="module")
def nlp(tiny_model_dir):
    # The same sharp temperatures as conftest's trained_ner, so tokens exit.
    return make_ner_nlp(tiny_model_dir, steps=15, threshold=0.5, window=1, temperatures=[TEMPERATURE] * 4)


def encoder_of(nlp):
    return get_shim(nlp.get_pipe("tokee_ner").model).encoder


def predict(nlp, texts, **fields):
    with exit_settings(nlp, fields):
        return nlp.get_pipe("tokee_ner").predict([nlp.make_doc(t) for t in texts])


def scored(predictions):
    """Tags and exit layers of the tokens that have wordpieces, concatenated."""
    tags = numpy.concatenate([p.logits.argmax(-1)[p.exit_layers > 0] for p in predictions])
    layers = numpy.concatenate([p.exit_layers[p.exit_layers > 0] for p in predictions])
    return tags, layers


def signature(docs):
    return [
        ([(e.start, e.end, e.label_) for e in d.ents], d._.early_exit["tokee_ner"]["exit_layers"], d._.early_exit["tokee_ner"]["flops"])
        for d in docs
    ]


# -- the converted copy ----------------------------------------------------------


def test_copies_are_converted_and_the_originals_untouched(nlp):
    encoder = encoder_of(nlp)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    predict(nlp, SHORT, precision="bf16")
    predict(nlp, SHORT, precision="int8")
    bf16 = encoder.layer_stack("bf16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.parts[0].query.weight.dtype == torch.bfloat16 and bf16.parts[0].ffn_norm.weight.dtype == torch.bfloat16
    int8 = encoder.layer_stack("int8")
    linears = [getattr(p, name) for p in int8.parts for name in precision_module.LINEAR_PARTS]
    assert all(isinstance(m, precision_module.Int8Linear) and m.use_int_mm for m in linears)
    assert int8.parts[0].query.weight_int8.dtype == torch.int8
    assert int8.parts[0].attn_norm is encoder.layers[0].attn_norm  # LayerNorms stay fp32
    fp32 = encoder.layer_stack("fp32")
    # fp32 predictions run transposed copies of the same weights, equal up to rounding.
    assert all(isinstance(getattr(p, name), precision_module.FP32Linear)
               for p in fp32.parts for name in ("query", "key_value", "attn_out", "ffn_in", "ffn_out"))
    assert fp32.parts[0].query_key_value is None and fp32.parts[0].ffn_norm is encoder.layers[0].ffn_norm
    assert torch.equal(fp32.parts[0].ffn_in.weight_t, encoder.layers[0].ffn_in.weight.t())
    assert torch.equal(fp32.parts[0].value.weight_t, encoder.layers[0].value.weight.t())
    # Made once, then reused.
    assert encoder.layer_stack("int8") is int8 and encoder.layer_stack("bf16") is bf16
    assert encoder.layer_stack("fp32") is fp32
    after = encoder.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(p.dtype == torch.float32 for p in encoder.parameters())


@pytest.mark.parametrize("precision", REDUCED)
def test_predictions_agree_with_fp32(nlp, precision):
    fp32 = predict(nlp, TEXTS, exit_mode="off")
    reduced = predict(nlp, TEXTS, exit_mode="off", precision=precision)
    tags, _ = scored(fp32)
    tags_reduced, layers = scored(reduced)
    assert (tags == tags_reduced).mean() >= 0.95
    assert (layers == 4).all()
    # The reduced layers really ran: the logits move, a little.
    gap = max(float(numpy.abs(a.logits - b.logits).max()) for a, b in zip(fp32, reduced))
    assert 0.0 < gap < 0.5
    # FLOPs are counted from the schedule: the same in every precision.
    assert [p.flops for p in fp32] == [p.flops for p in reduced]
    assert [p.full_flops for p in fp32] == [p.full_flops for p in reduced]


@pytest.mark.parametrize("precision", REDUCED)
def test_tokee_exits_agree_with_fp32(nlp, precision):
    tags, layers = scored(predict(nlp, TEXTS))
    tags_reduced, layers_reduced = scored(predict(nlp, TEXTS, precision=precision))
    assert len(set(layers.tolist())) > 1, "exits should vary"
    assert (tags == tags_reduced).mean() >= 0.95
    assert (layers == layers_reduced).mean() >= 0.95


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize(
    "fields, layer",
    [({"threshold": 1.0}, 1), ({"threshold": 0.0}, 4), ({"thresholds": [0.0, 0.0, 1.0, 1.0]}, 3)],
)
def test_fixed_schedules_exit_where_fp32_does(nlp, precision, fields, layer):
    fp32 = predict(nlp, TEXTS, **fields)
    reduced = predict(nlp, TEXTS, precision=precision, **fields)
    assert (scored(reduced)[1] == layer).all()
    assert [p.flops for p in fp32] == [p.flops for p in reduced]


@pytest.mark.parametrize("precision", REDUCED)
def test_sentee_exits_match_where_uncertainty_is_far_from_the_threshold(nlp, precision):
    """A SENTEE row runs whole until it exits, so fp32 full-depth logits give
    its exact uncertainties: max normalized entropy over the row, per layer.
    Where every one of them, up to the exit, is clear of the threshold, every
    precision must exit the row at the same layer."""
    margin = 0.05
    docs = [nlp.make_doc(t) for t in SHORT]
    out = full_depth_logits(nlp.get_pipe("tokee_ner").model, docs)
    logits = torch.as_tensor(out.layer_logits)
    row_max = [
        [float(normalized_entropy(logits[l, idx[idx >= 0]], TEMPERATURE).max()) for l in range(4)]
        for idx in out.token_index
    ]
    checked = set()
    for threshold in (0.45, 0.55, 0.65, 0.75):
        reduced = predict(nlp, SHORT, exit_mode="sentee", threshold=threshold, precision=precision)
        fp32 = predict(nlp, SHORT, exit_mode="sentee", threshold=threshold)
        for u, pred, ref in zip(row_max, reduced, fp32):
            expected = next((l + 1 for l in range(3) if u[l] < threshold), 4)
            if all(abs(u[l] - threshold) > margin for l in range(min(expected, 3))):
                assert set(ref.exit_layers[ref.exit_layers > 0].tolist()) == {expected}
                assert set(pred.exit_layers[pred.exit_layers > 0].tolist()) == {expected}
                checked.add(expected)
    assert len(checked) >= 2 and min(checked) < 4, f"too few clear rows to check: {checked}"


@pytest.mark.parametrize("precision", REDUCED)
def test_batch_invariance_and_long_documents(nlp, precision):
    with exit_settings(nlp, {"precision": precision}):
        alone = [signature(nlp.pipe([t]))[0] for t in TEXTS]
        mixed = signature(nlp.pipe(TEXTS[::-1], batch_size=32))[::-1]
        pairs = signature(nlp.pipe(TEXTS, batch_size=2))
        long_doc = nlp(" ".join(["John Smith lives in New York and works for Google ."] * 40))
    # int8 too: its activation scales are per token, so nothing depends on the batch.
    assert alone == mixed == pairs
    layers = long_doc._.early_exit["tokee_ner"]["exit_layers"]
    assert len(long_doc) > 400 and len(layers) == len(long_doc) and 0 not in layers
    fp32_doc = nlp(long_doc.text)
    assert numpy.mean([a.ent_iob_ == b.ent_iob_ for a, b in zip(long_doc, fp32_doc)]) >= 0.95


# fp32 itself is batch-invariant in tags and exit layers but not in the last
# bits of the logits: torch's fp32 attention and off-ramp kernels round
# differently with the batch's shape. int8 adds nothing to that (its products
# are exact integers with per-token scales: see the Int8Linear tests), while a
# per-sub-batch activation scale moved these logits by ~1e-3. bf16's oneDNN
# products round with the shape too. int8 can pass a float difference on:
# a hidden value within float rounding of a quantization step's edge rounds
# to the other step (seen once, 6e-5 on the seeded test model), still two
# orders below a per-sub-batch scale's 1e-3.
LOGIT_GAP = {"fp32": 1e-5, "int8": 1e-4, "int8-ort": 1e-4, "fp32-ort": 1e-5, "bf16": 1e-2}


@pytest.mark.parametrize("precision", ["fp32"] + REDUCED)
def test_a_doc_alone_and_in_a_batch_of_32_gets_the_same_result(nlp, precision):
    batch = (TEXTS * 4)[:32]
    mixed = predict(nlp, batch[::-1], precision=precision)[::-1]
    for text, together in zip(batch, mixed):
        (alone,) = predict(nlp, [text], precision=precision)
        assert numpy.array_equal(alone.exit_layers, together.exit_layers), text
        assert numpy.array_equal(alone.logits.argmax(-1), together.logits.argmax(-1)), text
        assert (alone.flops, alone.full_flops) == (together.flops, together.full_flops)
        assert float(numpy.abs(alone.logits - together.logits).max()) <= LOGIT_GAP[precision], text


def test_calibration_logits_can_be_read_at_a_precision(nlp):
    docs = [nlp.make_doc(t) for t in SHORT]
    model = nlp.get_pipe("tokee_ner").model
    fp32 = full_depth_logits(model, docs).layer_logits
    int8 = full_depth_logits(model, docs, precision="int8").layer_logits
    assert fp32.shape == int8.shape and fp32.dtype == int8.dtype == numpy.float32
    assert 0.0 < float(numpy.abs(fp32 - int8).max()) < 0.5


# -- settings: config, load time, run time, exit_settings ------------------------


@pytest.mark.parametrize("factory", ["tokee_ner", "tokee_tagger", "tokee_segmenter"])
def test_every_factory_has_the_field(tiny_model_dir, factory):
    blank = spacy.blank("en")
    pipe = blank.add_pipe(factory, config={"model": {"name": str(tiny_model_dir)}, "precision": "int8"})
    assert pipe.precision == "int8" and pipe.policy.precision == "int8"
    assert spacy.blank("en").add_pipe(factory, config={"model": {"name": str(tiny_model_dir)}}).precision == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "INT8", 8, None])
def test_bad_values_name_the_field(nlp, tiny_model_dir, bad):
    ner = nlp.get_pipe("tokee_ner")
    policy = ner.policy
    with pytest.raises(ValueError, match="'precision' must be one of"):
        ner.precision = bad
    assert ner.policy is policy
    with pytest.raises(ValueError, match="'precision'"):
        ExitPolicy(precision=bad)
    with pytest.raises(ValueError, match="'precision'"):
        with exit_settings(nlp, {"threshold": 0.2, "precision": bad}):
            pass
    assert ner.policy is policy
    if isinstance(bad, str):  # spaCy's config validation turns the others away first
        with pytest.raises(ValueError, match="'precision'"):
            spacy.blank("en").add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}, "precision": bad})


def test_exit_settings_sets_and_restores_precision(nlp):
    ner = nlp.get_pipe("tokee_ner")
    policy = ner.policy
    with exit_settings(nlp, {"precision": "int8", "threshold": 0.3}):
        assert (ner.precision, ner.threshold) == ("int8", 0.3)
    assert ner.policy is policy and ner.precision == "fp32"
    with pytest.raises(RuntimeError, match="inside"):
        with exit_settings(nlp, {"precision": "bf16"}):
            assert ner.precision == "bf16"
            raise RuntimeError("inside")
    assert ner.policy is policy


@pytest.mark.parametrize("precision", ["int8", "int8-ort", "fp32-ort"])
def test_precision_round_trips_through_disk_and_the_config(nlp, tmp_path, precision):
    fp32 = predict(nlp, TEXTS)
    int8 = predict(nlp, TEXTS, precision=precision)
    nlp.to_disk(tmp_path / "p")
    assert spacy.load(tmp_path / "p").get_pipe("tokee_ner").precision == "fp32"
    loaded = spacy.load(tmp_path / "p", config={"components.tokee_ner.precision": precision})
    ner = loaded.get_pipe("tokee_ner")
    assert ner.precision == precision
    # Identical fp32 weights quantize identically.
    for a, b in zip(int8, predict(loaded, TEXTS)):
        assert numpy.array_equal(a.logits, b.logits) and numpy.array_equal(a.exit_layers, b.exit_layers)
    # Switching back is lossless: the fp32 weights were never replaced.
    ner.precision = "fp32"
    for a, b in zip(fp32, predict(loaded, TEXTS)):
        assert numpy.array_equal(a.logits, b.logits) and numpy.array_equal(a.exit_layers, b.exit_layers)
    assert all(p.dtype == torch.float32 for p in encoder_of(loaded).parameters())


@pytest.mark.parametrize("precision", ["bf16", "int8-ort", "fp32-ort"])
def test_a_configured_precision_is_saved_and_loaded(tiny_model_dir, tmp_path, precision):
    nlp = make_ner_nlp(tiny_model_dir, steps=1, precision=precision)
    expected = predict(nlp, SHORT)
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert loaded.get_pipe("tokee_ner").precision == precision
    for a, b in zip(expected, predict(loaded, SHORT)):
        assert numpy.array_equal(a.logits, b.logits)
    assert all(v.dtype in (torch.float32, torch.int64) for v in encoder_of(loaded).state_dict().values())


def test_no_quantized_copy_is_written(tiny_model_dir, tmp_path):
    nlp = make_ner_nlp(tiny_model_dir, steps=1)
    predict(nlp, SHORT)  # the texts' strings enter the vocab now, not between the saves
    nlp.to_disk(tmp_path / "before")
    data = nlp.to_bytes()
    predict(nlp, SHORT, precision="int8")
    predict(nlp, SHORT, precision="bf16")
    predict(nlp, SHORT, precision="int8-ort")  # its ONNX graphs live in memory only
    assert len(encoder_of(nlp).precision_cache) == 4  # fp32 (transposed), int8, bf16, int8-ort
    nlp.to_disk(tmp_path / "after")
    assert nlp.to_bytes() == data
    before = sorted(p.relative_to(tmp_path / "before") for p in (tmp_path / "before").rglob("*") if p.is_file())
    after = sorted(p.relative_to(tmp_path / "after") for p in (tmp_path / "after").rglob("*") if p.is_file())
    assert before == after
    for name in before:
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes(), name


# -- weights changes, training -------------------------------------------------


def test_the_copy_is_rebuilt_after_the_weights_change(tiny_model_dir):
    nlp = make_ner_nlp(tiny_model_dir, steps=2, precision="int8")
    encoder = encoder_of(nlp)
    saved = {k: v.clone() for k, v in encoder.state_dict().items()}
    first = predict(nlp, SHORT)
    stack = encoder.layer_stack("int8")
    examples = ner_examples(nlp)
    optimizer = nlp.create_optimizer()
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    updated = predict(nlp, SHORT)
    assert encoder.layer_stack("int8") is not stack
    assert any(not numpy.array_equal(a.logits, b.logits) for a, b in zip(first, updated))
    # What a copy made from scratch from the new weights predicts.
    encoder.precision_cache.clear()
    for a, b in zip(updated, predict(nlp, SHORT)):
        assert numpy.array_equal(a.logits, b.logits)
    # load_state_dict (also how spaCy swaps in averaged weights) counts too.
    encoder.load_state_dict(saved)
    for a, b in zip(first, predict(nlp, SHORT)):
        assert numpy.array_equal(a.logits, b.logits)


@pytest.mark.parametrize("precision", REDUCED)
def test_training_runs_in_fp32(tiny_model_dir, precision):
    nlp = make_ner_nlp(tiny_model_dir, steps=1)
    ner = nlp.get_pipe("tokee_ner")
    examples = ner_examples(nlp)
    losses = []
    for value in ("fp32", precision):
        ner.precision = value
        torch.manual_seed(7)  # the same dropout masks
        losses.append(ner.update(examples, sgd=None)["tokee_ner"])  # no weight change
    assert losses[0] == losses[1]
    encoder = encoder_of(nlp)
    encoder.train()
    try:
        assert encoder.layer_stack(precision).parts == tuple(encoder.layers)
    finally:
        encoder.eval()


# -- Int8Linear ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (384, 1536), (1536, 384)])
def test_int8_linear_is_row_wise_and_exact_in_integers(shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated torch.ao, no fallback here
        layer = precision_module.Int8Linear(linear)
    emulated = precision_module.Int8Linear(linear, use_int_mm=False)
    # Weights: symmetric, one scale per output channel, the largest at +-127.
    assert layer.weight_int8.shape == linear.weight.shape and layer.weight_int8.dtype == torch.int8
    torch.testing.assert_close(layer.weight_scale, linear.weight.detach().abs().amax(dim=1) / 127)
    assert bool((layer.weight_int8.abs().amax(dim=1) == 127).all())
    x = torch.randn(40, shape[0]) * torch.linspace(0.01, 10.0, 40)[:, None]
    x[3] = 0.0  # an all-zero row quantizes to zeros, without dividing by zero
    with torch.no_grad():
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        assert torch.equal(together, alone)
        assert torch.equal(layer(x.view(4, 10, -1)).reshape_as(together), together)
        assert torch.equal(emulated(x), together)
        reference = linear(x)
    torch.testing.assert_close(together[3], linear.bias.detach())
    # Per-token scales keep the error relative to each row's own size.
    error = (together - reference).abs().amax(dim=1) / reference.abs().amax(dim=1).clamp(min=1e-6)
    assert float(error.max()) < 0.05


# -- the encoder alone ---------------------------------------------------------


def encoder_batch():
    torch.manual_seed(3)
    ids = torch.randint(5, 100, (2, 9))
    ids[1, 5:] = 0
    word_pieces = torch.tensor([[1, 3, 5, 7], [1, 2, 3, -1]])
    pairs = [(0, c, w) for w, c in enumerate([1, 3, 5, 7])] + [(1, c, w) for w, c in enumerate([1, 2, 3])]
    rows, cols, words = (torch.tensor(x) for x in zip(*pairs))
    return EncoderInput(ids, torch.tensor([9, 5]), word_pieces, rows, cols, words)


@pytest.mark.parametrize("precision", REDUCED)
def test_albert_keeps_its_shared_layer_shared(precision):
    encoder = EarlyExitEncoder(tiny_backbone("albert"), 5).eval()
    stack = encoder.layer_stack(precision)
    assert all(parts.query is stack.parts[0].query for parts in stack.parts)
    assert all(parts.dense_step is stack.parts[0].dense_step for parts in stack.parts)
    assert stack.parts[0].query is not encoder.layers[0].query
    batch = encoder_batch()
    with torch.no_grad():
        fp32 = encoder(batch, ExitPolicy(mode="off"))
        reduced = encoder(batch, ExitPolicy(mode="off", precision=precision))
    mask = batch.word_mask
    assert reduced.logits.dtype == torch.float32
    torch.testing.assert_close(reduced.logits[mask], fp32.logits[mask], atol=0.1, rtol=0.1)
    assert torch.equal(reduced.flops, fp32.flops)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_query_and_key_value_are_two_projections(precision):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for parts, original in zip(encoder.layer_stack(precision).parts, encoder.layers):
        assert parts.query_key_value is None and parts.key_value.out_features == 2 * original.key.out_features
        x = torch.randn(5, original.query.in_features).to(dtype)
        with torch.no_grad():
            keys, values = parts.key_value(x).chunk(2, dim=-1)
            torch.testing.assert_close(keys, parts.key(x), atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(values, parts.value(x), atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(parts.query(x).float(), original.query(x.float()), atol=0.05, rtol=0.05)


def test_bf16_products_read_a_packed_weight_with_the_plain_result():
    linear = torch.nn.Linear(32, 48)
    made = quantized_linear.BF16Linear(linear)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch")
    assert made.packed is not None and made.output_slice(0, 16).packed is None
    x = torch.randn(7, 32).to(torch.bfloat16)
    with torch.no_grad():
        plain = quantized_linear.on_onednn(torch.nn.functional.linear, x, made.weight, made.bias)
        torch.testing.assert_close(made(x), plain, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(made(x[None])[0], made(x))


def test_row_buckets_bound_the_shapes_a_onednn_product_compiles():
    buckets = [quantized_linear.row_bucket(n) for n in range(1, 9000)]
    assert all(b >= n for n, b in enumerate(buckets, start=1))
    assert buckets[:16] == list(range(1, 17))  # a sentence's few rows stay as they are
    assert all(b - n < 0.25 * n for n, b in enumerate(buckets, start=1) if n >= 64)
    assert len(set(buckets)) < 80  # oneDNN keeps 1,024 kernels: a few shapes per weight fit


@pytest.mark.parametrize("n", [1, 17, 100, 300])
def test_bf16_padded_rows_give_the_unpadded_product(n):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch")
    made = quantized_linear.BF16Linear(torch.nn.Linear(32, 48))
    x = torch.randn(n, 32).to(torch.bfloat16)
    with torch.no_grad():
        plain = quantized_linear.on_onednn(torch.nn.functional.linear, x, made.weight, made.bias)
        got = made(x)
        assert got.shape == (n, 48) and made(x.view(1, n, 32)).shape == (1, n, 48)
        torch.testing.assert_close(got, plain, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("precision", ["int8"])
def test_attention_inputs_are_slices_of_one_fused_projection(precision):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    for parts, original in zip(encoder.layer_stack(precision).parts, encoder.layers):
        fused = parts.query_key_value
        assert fused is not None and fused.out_features == 3 * original.query.out_features
        # No second copy of the weights: the three projections view the fused one.
        name = "weight_int8" if precision == "int8" else "weight"
        storage = getattr(fused, name).untyped_storage().data_ptr()
        for piece in (parts.query, parts.key, parts.value, parts.key_value):
            assert getattr(piece, name).untyped_storage().data_ptr() == storage
        x = torch.randn(5, original.query.in_features)
        with torch.no_grad():
            q, k, v = fused(x.to(torch.bfloat16) if precision == "bf16" else x).chunk(3, dim=-1)
            separate = (parts.query, parts.key, parts.value)
            for got, module in zip((q, k, v), separate):
                assert torch.equal(got, module(x.to(torch.bfloat16) if precision == "bf16" else x))


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("dense", [True, False])
def test_a_layer_with_fused_projections_equals_one_without(precision, dense):
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    stack = encoder.layer_stack(precision)
    parts = stack.parts[1]
    unfused = dataclasses.replace(parts, query_key_value=None, key_value=None)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 7, encoder.spec.hidden_size, generator=generator).to(stack.dtype or torch.float32)
    present = torch.ones(3, 7, dtype=torch.bool)
    active = present.clone()
    if not dense:
        present[1, 4:] = False  # padding: keys and values are scattered
        present[2] = False  # a finished row
        active = present.clone()
        active[0, ::2] = False  # halted tokens stay keys and values
    rows = PackedRows(active)
    with torch.no_grad():
        fused_out = halt_and_copy_layer(parts, hidden.clone(), present, rows, encoder.spec.num_heads)
        plain_out = halt_and_copy_layer(unfused, hidden.clone(), present, rows, encoder.spec.num_heads)
    assert torch.equal(fused_out, plain_out)
    assert not torch.equal(fused_out[active], hidden[active])


def test_a_deepcopy_of_the_encoder_starts_with_an_empty_cache():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    encoder.layer_stack("int8")
    assert len(encoder.precision_cache) == 1
    assert len(copy.deepcopy(encoder).precision_cache) == 0


# -- hardware without fast kernels -------------------------------------------------


def test_a_cpu_without_fast_bf16_warns_once_and_runs(nlp, monkeypatch):
    monkeypatch.setattr(quantized_linear, "_warned", set())
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="bf16") as record:
        first = predict(nlp, SHORT, precision="bf16")
        second = predict(nlp, SHORT, precision="bf16")
    assert len([w for w in record if "bf16" in str(w.message)]) == 1
    assert encoder_of(nlp).layer_stack("bf16").dtype == torch.bfloat16
    assert all(numpy.array_equal(a.logits, b.logits) for a, b in zip(first, second))


def test_missing_int8_kernels_warn_once_and_emulate_exactly(nlp, monkeypatch):
    fast = predict(nlp, SHORT, precision="int8")
    monkeypatch.setattr(quantized_linear, "_warned", set())
    # Both the stack's cache key and each layer's kernel check ask.
    monkeypatch.setattr(precision_module, "int8_kernels_available", lambda: False)
    monkeypatch.setattr(quantized_linear, "int8_kernels_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="int8") as record:
        first = predict(nlp, SHORT, precision="int8")
        predict(nlp, SHORT, precision="int8")
    assert len([w for w in record if "int8" in str(w.message)]) == 1
    stack = encoder_of(nlp).layer_stack("int8")
    assert not any(p.query.use_int_mm for p in stack.parts)
    # The emulation computes the same integers: the same results, bit for bit.
    for a, b in zip(fast, first):
        assert numpy.array_equal(a.logits, b.logits) and numpy.array_equal(a.exit_layers, b.exit_layers)


def test_a_shape_int_mm_refuses_falls_back_with_one_warning(monkeypatch):
    linear = torch.nn.Linear(32, 64)
    fast = precision_module.Int8Linear(linear)
    assert fast.use_int_mm
    x = torch.randn(5, 32)
    with torch.no_grad():
        expected = fast(x)

    def refuse(*args):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(quantized_linear, "_warned", set())
    monkeypatch.setattr(torch, "_int_mm", refuse)
    with pytest.warns(RuntimeWarning, match="_int_mm") as record:
        layers = [precision_module.Int8Linear(linear) for _ in range(2)]
    assert len(record) == 1 and not any(m.use_int_mm for m in layers)
    with torch.no_grad():
        assert torch.equal(layers[0](x), expected)


def test_this_machine_needs_no_warning(nlp, monkeypatch):
    monkeypatch.setattr(quantized_linear, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        predict(nlp, SHORT, precision="int8")
        if precision_module.cpu_has_fast_bf16():
            predict(nlp, SHORT, precision="bf16")


# -- fp32: transposed copies of the same weights -----------------------------------


@pytest.mark.parametrize("family", ["bert", "albert"])
@pytest.mark.parametrize("dense", [True, False])
def test_the_fp32_stack_computes_what_the_original_modules_do(family, dense):
    encoder = EarlyExitEncoder(tiny_backbone(family), 5).eval()
    stack = encoder.layer_stack("fp32")
    if family == "albert":  # one shared layer stays one copy
        assert all(parts.query is stack.parts[0].query for parts in stack.parts)
    assert all(parts.dense_step is stack.parts[0].dense_step for parts in stack.parts)
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 7, encoder.spec.hidden_size, generator=generator)
    present = torch.ones(3, 7, dtype=torch.bool)
    active = present.clone()
    if not dense:
        present[1, 4:] = False
        present[2] = False
        active = present.clone()
        active[0, ::2] = False
    rows = PackedRows(active)
    with torch.no_grad():
        for parts, original in zip(stack.parts, encoder.layers):
            got = halt_and_copy_layer(parts, hidden.clone(), present, rows, encoder.spec.num_heads)
            want = halt_and_copy_layer(original, hidden.clone(), present, rows, encoder.spec.num_heads)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert torch.equal(got[~active], hidden[~active])  # halted pieces are copied, bit for bit


def test_fp32_exits_and_predictions_match_the_original_modules():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    batch = encoder_batch()
    originals = LayerStack(tuple(encoder.layers))
    for policy in (ExitPolicy(mode="off"), ExitPolicy(mode="tokee", threshold=0.9, window=1)):
        with torch.no_grad():
            fast = encoder(batch, policy)
            plain = encoder(batch, policy, stack=originals)
        mask = batch.word_mask
        assert torch.equal(fast.exit_layers, plain.exit_layers)
        torch.testing.assert_close(fast.logits[mask], plain.logits[mask], atol=1e-5, rtol=1e-5)
        assert torch.equal(fast.flops, plain.flops)
