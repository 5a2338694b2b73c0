"""tokee_ner as a spaCy component: training, batching, hostile text, serialization, config."""
import dataclasses
import re
import shutil

import numpy
import pytest
import spacy
from spacy.training import Example

from spacy_early_exit.testing import NER_DATA, make_ner_nlp, ner_examples, save_tiny_backbone


def record(doc, name="tokee_ner"):
    return doc._.early_exit[name]


def outputs(nlp, texts, batch_size=32):
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    return [
        ([(e.start, e.end, e.label_) for e in d.ents], record(d)["exit_layers"], record(d)["flops"], record(d)["full_flops"])
        for d in docs
    ]


TEXTS = [t for t, _ in NER_DATA] + [
    "London",
    "the company said new york will have three one two",
    "John and Mary and Google and Apple in Paris, London and New York were named by Smith .",
    "see http://" + "/".join(["abc"] * 60) + " now",  # a URL longer than the position limit
]


def test_update_lowers_the_stage1_loss(tiny_model_dir):
    nlp = make_ner_nlp(tiny_model_dir)
    examples = ner_examples(nlp)
    optimizer = nlp.create_optimizer()
    first = nlp.update(examples, sgd=optimizer)["tokee_ner"]
    for _ in range(20):
        last = nlp.update(examples, sgd=optimizer)["tokee_ner"]
    assert last < first * 0.8


def test_learning_rates_split_backbone_and_ramps(tiny_model_dir):
    nlp = make_ner_nlp(tiny_model_dir, fine_tuning={"backbone_lr_factor": 0.0})
    shim = nlp.get_pipe("tokee_ner").model.layers[0].shims[0]
    before = {n: p.detach().clone() for n, p in shim._model.named_parameters()}
    nlp.update(ner_examples(nlp), sgd=nlp.create_optimizer())
    changed = {n for n, p in shim._model.named_parameters() if not p.detach().equal(before[n])}
    assert changed and all(n.startswith("encoder.ramps.") for n in changed)


def test_embedding_rate_can_differ_from_the_backbone(tiny_model_dir):
    # Backbone frozen, embeddings at the ramp rate: only ramps and word embeddings move.
    nlp = make_ner_nlp(tiny_model_dir, fine_tuning={"backbone_lr_factor": 0.0, "embedding_lr_factor": 1.0})
    shim = nlp.get_pipe("tokee_ner").model.layers[0].shims[0]
    before = {n: p.detach().clone() for n, p in shim._model.named_parameters()}
    nlp.update(ner_examples(nlp), sgd=nlp.create_optimizer())
    changed = {n for n, p in shim._model.named_parameters() if not p.detach().equal(before[n])}
    moved = {n for n in changed if not n.startswith("encoder.ramps.")}
    assert moved == {"encoder.backbone.embeddings.word_embeddings.weight"}


@pytest.mark.parametrize("bad", [-0.5, True, "fast"])
def test_bad_embedding_rate_is_a_clear_error(tiny_model_dir, bad):
    # The message names the field and repeats the bad value.
    with pytest.raises(ValueError, match=f"embedding_lr_factor.*{re.escape(repr(bad))}"):
        make_ner_nlp(tiny_model_dir, fine_tuning={"embedding_lr_factor": bad})


def test_annotations_and_record(trained_ner):
    doc = trained_ner("John Smith lives in London .")
    rec = record(doc)
    assert set(rec) == {"exit_layers", "flops", "full_flops"}
    assert len(rec["exit_layers"]) == len(doc)
    assert all(1 <= layer <= 4 for layer in rec["exit_layers"])
    assert isinstance(rec["flops"], int) and rec["flops"] <= rec["full_flops"] + 4 * 2 * 32 * 7 * len(doc)
    assert trained_ner.get_pipe("tokee_ner").labels == ("LOC", "ORG", "PER")


def test_off_mode_costs_exactly_full_depth(trained_ner):
    ner = trained_ner.get_pipe("tokee_ner")
    with ner.using(exit_mode="off"):
        for _, layers, flops, full in outputs(trained_ner, TEXTS):
            assert flops == full and set(layers) == {4}


@pytest.mark.parametrize("mode", ["tokee", "sentee", "off"])
def test_batch_invariance(trained_ner, mode):
    ner = trained_ner.get_pipe("tokee_ner")
    with ner.using(exit_mode=mode):
        alone = [outputs(trained_ner, [t])[0] for t in TEXTS]
        mixed = outputs(trained_ner, TEXTS[::-1], batch_size=32)[::-1]
        pairs = outputs(trained_ner, TEXTS, batch_size=2)
    assert alone == mixed == pairs
    if mode == "tokee":
        assert len({l for _, layers, _, _ in alone for l in layers}) > 1, "exits should vary"


def test_threshold_trades_flops(trained_ner):
    ner = trained_ner.get_pipe("tokee_ner")
    spent = []
    for threshold in (0.0, 0.5, 1.0):
        with ner.using(threshold=threshold):
            spent.append(sum(f for _, _, f, _ in outputs(trained_ner, TEXTS)))
    assert spent[0] > spent[1] > spent[2]


def test_using_runs_under_other_settings_and_restores_them(trained_ner):
    ner = trained_ner.get_pipe("tokee_ner")
    before = ner.policy
    spent = sum(f for _, _, f, _ in outputs(trained_ner, TEXTS))
    with ner.using(threshold=0.0, window=0):
        assert (ner.threshold, ner.window) == (0.0, 0)
        assert ner.policy.temperatures == before.temperatures  # fields not named are kept
        # No token is certain enough to exit at threshold 0: more is spent.
        assert sum(f for _, _, f, _ in outputs(trained_ner, TEXTS)) > spent
    assert ner.policy == before
    assert sum(f for _, _, f, _ in outputs(trained_ner, TEXTS)) == spent
    # A whole policy: the off mode's, then an error inside the block.
    off = dataclasses.replace(before, mode="off")
    with pytest.raises(RuntimeError, match="inside"):
        with ner.using(off):
            assert ner.exit_mode == "off"
            assert all(set(layers) == {4} for _, layers, _, _ in outputs(trained_ner, TEXTS[:2]))
            raise RuntimeError("inside")
    assert ner.policy == before, "an error inside the block kept the other settings"
    with pytest.raises(ValueError, match="window"):
        with ner.using(window=-1):
            pass
    assert ner.policy == before


def test_hostile_and_long_documents(trained_ner):
    long_text = " ".join(["John Smith lives in New York and works for Google ."] * 40)
    texts = [
        "",
        "   ",
        "London \n\n  Paris \t",
        "emoji 😀🎉 and \x07\x00 control \u200b zero-width",
        "مرحبا John שלום",
        "a" * 300,
        long_text,
    ]
    docs = list(trained_ner.pipe(texts, batch_size=3))
    for doc in docs:
        rec = record(doc)
        assert len(rec["exit_layers"]) == len(doc)
        for token, layer in zip(doc, rec["exit_layers"]):
            assert (layer == 0) == (token.is_space or not token.text.strip("\x07\x00\u200b"))
    long_doc = docs[-1]
    assert len(long_doc) > 400  # the tiny backbone's limit is 64 positions
    assert 0 not in record(long_doc)["exit_layers"]
    assert record(docs[0]) == {"exit_layers": [], "flops": 0, "full_flops": 0}


def test_long_document_windows_match_short_ones(tiny_model_dir):
    nlp = make_ner_nlp(tiny_model_dir, steps=5, exit_mode="off", model={"max_length": 24})
    sentence = "John Smith lives in New York ."
    alone = outputs(nlp, [sentence])[0]
    long = nlp(" ".join([sentence] * 12))
    layers = record(long)["exit_layers"]
    assert len(layers) == len(long) and 0 not in layers
    # A sentence in the middle of a long document is read from a window in
    # which it has context on both sides; it must be labeled, not dropped.
    assert record(long)["full_flops"] > 12 * alone[3]


def test_serialization_round_trip_without_the_source(trained_ner, tmp_path):
    source = save_tiny_backbone(tmp_path / "backbone")
    nlp = make_ner_nlp(source, steps=10, threshold=0.5, window=1, temperatures=[0.25] * 4)
    expected = outputs(nlp, TEXTS)
    nlp.to_disk(tmp_path / "pipeline")
    data = nlp.to_bytes()
    shutil.rmtree(source)
    loaded = spacy.load(tmp_path / "pipeline")
    assert outputs(loaded, TEXTS) == expected
    # Exit settings live in the config (spacy.load overrides win), so bytes
    # are loaded into a pipeline built from the same config.
    blank = spacy.util.load_model_from_config(nlp.config)
    blank.from_bytes(data)
    assert outputs(blank, TEXTS) == expected


def test_settings_at_load_time_and_run_time(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components.tokee_ner.threshold": 0.25, "components.tokee_ner.window": 0})
    ner = loaded.get_pipe("tokee_ner")
    assert (ner.threshold, ner.window) == (0.25, 0)
    ner.thresholds = [0.1, 0.2, 0.3, 0.4]
    ner.temperatures = [1.0, 1.5, 2.0, 2.5]
    assert ner.policy.layer_threshold(3) == 0.3 and ner.policy.layer_temperature(4) == 2.5
    assert spacy.load(tmp_path / "p").get_pipe("tokee_ner").threshold == 0.5


@pytest.mark.parametrize(
    "field, value",
    [("threshold", 2.0), ("threshold", -0.1), ("window", -2), ("exit_mode", "fast"), ("thresholds", [0.1]), ("temperatures", [1.0, -1.0, 1.0, 1.0])],
)
def test_bad_settings_fail_naming_the_field(trained_ner, field, value):
    ner = trained_ner.get_pipe("tokee_ner")
    with pytest.raises(ValueError, match=field):
        setattr(ner, field, value)
    assert ner.policy.threshold == 0.5 and ner.policy.thresholds is None


@pytest.mark.parametrize(
    "config, field",
    [
        ({"threshold": 3}, "threshold"),
        ({"exit_mode": "always"}, "exit_mode"),
        ({"window": -1}, "window"),
        ({"tag_scheme": "IOB3"}, "tag_scheme"),
        ({"model": {"max_length": 2}}, "max_length"),
    ],
)
def test_bad_config_fails_at_add_pipe(tiny_model_dir, config, field):
    nlp = spacy.blank("en")
    model = {"name": str(tiny_model_dir), **config.pop("model", {})}
    with pytest.raises(ValueError, match=field):
        nlp.add_pipe("tokee_ner", config={"model": model, **config})


def test_per_layer_list_of_wrong_depth_fails_at_load(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "p")
    with pytest.raises(ValueError, match="temperatures"):
        spacy.load(tmp_path / "p", config={"components.tokee_ner.temperatures": [1.0, 1.0]})


def test_biluo_scheme_and_span_decoding(tiny_model_dir):
    nlp = make_ner_nlp(tiny_model_dir, steps=2, tag_scheme="BILUO")
    ner = nlp.get_pipe("tokee_ner")
    assert len(ner.class_names) == 1 + 4 * 3
    doc = nlp.make_doc("a b c d e f")
    ner.annotate(doc, ["I-PER", "L-PER", "U-ORG", "B-LOC", "I-ORG", None])
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [(0, 2, "PER"), (2, 3, "ORG"), (3, 4, "LOC"), (4, 5, "ORG")]


def test_evaluate_uses_spacys_ner_scorer(trained_ner):
    scores = trained_ner.evaluate(ner_examples(trained_ner))
    assert {"ents_f", "ents_p", "ents_r", "ents_per_type"} <= set(scores)


def test_untrained_component_says_initialize(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    with pytest.raises(ValueError, match="initialize"):
        nlp("John lives here")


def test_missing_labels_and_late_labels(tiny_model_dir):
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    unlabeled = [Example(nlp.make_doc("no entities here"), nlp.make_doc("no entities here"))]
    with pytest.raises(ValueError, match="no labels"):
        nlp.initialize(lambda: unlabeled)
    ner.initialize(lambda: ner_examples(nlp), nlp=nlp)
    with pytest.raises(ValueError, match="after initialization"):
        ner.add_label("MISC")


def test_layer_logits_at_full_depth(trained_ner):
    ner = trained_ner.get_pipe("tokee_ner")
    examples = ner_examples(trained_ner)
    logits, gold = ner.layer_logits(examples, batch_size=3)
    n_tokens = sum(len(eg.predicted) for eg in examples)
    assert logits.shape == (4, n_tokens, len(ner.class_names)) and gold.shape == (n_tokens,)
    # The last layer is what full-depth prediction reads.
    with ner.using(exit_mode="off"):
        predictions = ner.predict([eg.predicted for eg in examples])
    expected = numpy.concatenate([p.logits for p in predictions])
    numpy.testing.assert_allclose(logits[-1], expected, rtol=1e-4, atol=1e-5)


def test_extend_vocab_adds_unknown_characters(tiny_model_dir, tmp_path):
    from spacy.training import Example as Ex

    nlp = spacy.blank("zh")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}, "fine_tuning": {"extend_vocab": True}})
    texts = [("张三在北京", [(0, 2, "PER"), (3, 5, "LOC")]), ("李四去上海了", [(0, 2, "PER"), (3, 5, "LOC")])]
    examples = [Ex.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in texts]
    nlp.initialize(lambda: examples)
    shim = nlp.get_pipe("tokee_ner").model.layers[0].shims[0]
    encoding = shim.tokenizer.backend_tokenizer.encode("张三到北京", add_special_tokens=False)
    assert encoding.offsets == [(i, i + 1) for i in range(5)]
    unk = shim.tokenizer.unk_token_id
    assert encoding.ids[2] == unk and unk not in encoding.ids[:2] + encoding.ids[3:]  # 到 was not in training
    assert shim.encoder.backbone.get_input_embeddings().num_embeddings == len(shim.tokenizer)
    nlp.update(examples, sgd=nlp.create_optimizer())
    expected = [(e.text, e.label_) for e in nlp("张三在上海").ents]
    nlp.to_disk(tmp_path / "zh")
    assert [(e.text, e.label_) for e in spacy.load(tmp_path / "zh")("张三在上海").ents] == expected


def test_extend_vocab_with_a_padding_tokenizer(tiny_model_dir, tmp_path):
    # all-MiniLM-L6-v2's tokenizer.json pads every encoding to 128: unknown
    # characters must still be found (they once were not: 0 added).
    import shutil

    from transformers import AutoTokenizer

    padded = tmp_path / "padded"
    shutil.copytree(tiny_model_dir, padded)
    tokenizer = AutoTokenizer.from_pretrained(padded)
    tokenizer.backend_tokenizer.enable_padding(length=32, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    tokenizer.save_pretrained(padded)
    assert AutoTokenizer.from_pretrained(padded).backend_tokenizer.padding is not None
    nlp = spacy.blank("zh")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(padded)}, "fine_tuning": {"extend_vocab": True}})
    examples = [Example.from_dict(nlp.make_doc("张三在北京"), {"entities": [(0, 2, "PER"), (3, 5, "LOC")]})]
    nlp.initialize(lambda: examples)
    shim = nlp.get_pipe("tokee_ner").model.layers[0].shims[0]
    assert len(shim.tokenizer) > len(tokenizer)
    ids = shim.tokenizer(list("张三在北京"), is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert shim.tokenizer.unk_token_id not in ids


def test_initialize_warns_when_gold_does_not_align(tiny_model_dir):
    # Characters annotated, but the English rule tokenizer makes one token of
    # the unspaced sentence: nothing would be learned.
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    text = "张三在北京工作了很多年"
    example = Example.from_dict(nlp.make_doc(text), {"words": list(text), "entities": ["B-PER", "L-PER", "O", "B-LOC", "L-LOC"] + ["O"] * 6})
    assert len(example.predicted) == 1
    with pytest.warns(UserWarning, match="do not match"):
        nlp.initialize(lambda: [example])


def test_initialize_is_quiet_on_aligned_data(tiny_model_dir, recwarn):
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    nlp.initialize(lambda: ner_examples(nlp))
    assert not [w for w in recwarn if "do not match" in str(w.message)]
