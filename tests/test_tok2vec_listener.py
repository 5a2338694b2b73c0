"""spaCy's own components on the shared early-exit encoder (EarlyExitTok2VecListener.v1)."""
import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_early_exit.layers.architecture import get_shim
from spacy_early_exit.layers.tok2vec_listener import build_early_exit_tok2vec_listener
from spacy_early_exit.testing import LISTENER, TINY_FINE_TUNING

SHARP = {"threshold": 0.5, "window": 1, "temperatures": [0.25] * 4}
FEATURES = {"@architectures": "spacy-early-exit.EarlyExitTok2VecListener.v1", "upstream": "*"}
# (text, heads, deps, entities): spaCy's own parser test sentences.
PARSES = [
    ("They trade mortgage-backed securities.", [1, 1, 4, 4, 5, 1, 1],
     ["nsubj", "ROOT", "compound", "punct", "nmod", "dobj", "punct"], []),
    ("I like London and Berlin.", [1, 1, 1, 2, 2, 1], ["nsubj", "ROOT", "dobj", "cc", "conj", "punct"],
     [(7, 13, "LOC"), (18, 24, "LOC")]),
]
TEXTS = [text for text, *_ in PARSES] + ["Berlin and London trade.", "I", "They  like\n\nLondon ."]


def parser_config(hidden_width: int = 16) -> dict:
    model = {
        "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "parser", "extra_state_tokens": False,
        "hidden_width": hidden_width, "maxout_pieces": 2, "use_upper": True, "nO": None, "tok2vec": dict(FEATURES),
    }
    # Every label of two sentences is rare: keep them (spaCy folds labels seen < 30 times into "dep").
    return {"model": model, "min_action_freq": 1}


def make_pipeline(model_dir, head: bool = True, parser: bool = True, **exit_fields):
    nlp = spacy.blank("en")
    encoder = {"model": {"name": str(model_dir)}, "fine_tuning": dict(TINY_FINE_TUNING), **exit_fields}
    nlp.add_pipe("tokee_transformer", config=encoder)
    if parser:
        nlp.add_pipe("parser", config=parser_config())
    if head:
        nlp.add_pipe("tokee_ner", config={"model": dict(LISTENER)})
    return nlp


def examples_for(nlp, entities: bool = True, parses: bool = True):
    examples = []
    for text, heads, deps, ents in PARSES:
        gold = {}
        if parses:
            gold.update(heads=heads, deps=deps)
        if entities:
            gold["entities"] = ents
        examples.append(Example.from_dict(nlp.make_doc(text), gold))
    return examples


def trained(model_dir, steps: int = 6, **exit_fields):
    fix_random_seed(0)
    nlp = make_pipeline(model_dir, **{**SHARP, **exit_fields})
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def parses(nlp, texts=TEXTS):
    return [([(t.head.i, t.dep_) for t in doc], doc._.early_exit, doc.tensor.copy()) for doc in nlp.pipe(texts, batch_size=2)]


@pytest.fixture(scope="module")
def with_parser(tiny_model_dir):
    return trained(tiny_model_dir)


def test_a_parser_on_the_shared_encoder_trains_saves_loads_and_predicts_the_same(with_parser, tmp_path):
    transformer = with_parser.get_pipe("tokee_transformer")
    assert transformer.listening_components == ["parser", "tokee_ner"]
    assert transformer.head_names == ["tokee_ner"]  # the parser adds no off-ramps
    before = parses(with_parser)
    for (arcs, record, tensor), text in zip(before, TEXTS):
        doc = with_parser.make_doc(text)
        assert len(arcs) == len(doc) and tensor.shape == (len(doc), 32)
        assert list(record) == ["tokee_transformer"]
    assert [parses(with_parser, [text])[0][0] for text in TEXTS] == [arcs for arcs, _, _ in before]  # batch-invariant
    with_parser.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    after = parses(loaded)
    assert [(a, r) for a, r, _ in after] == [(a, r) for a, r, _ in before]
    assert all(numpy.allclose(x, y, atol=1e-6) for (_, _, x), (_, _, y) in zip(after, before))


def test_training_lowers_the_parsers_loss(tiny_model_dir):
    fix_random_seed(0)
    nlp = make_pipeline(tiny_model_dir, **SHARP)
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    first = nlp.update(examples, sgd=optimizer)["parser"]
    for _ in range(12):
        last = nlp.update(examples, sgd=optimizer)["parser"]
    assert last < first


def test_the_parsers_gradient_reaches_the_shared_encoder_and_not_the_off_ramps(tiny_model_dir):
    nlp = trained(tiny_model_dir, steps=3)  # spaCy's parser starts with a zero output layer: no gradient yet
    encoder = get_shim(nlp.get_pipe("tokee_transformer").model).encoder
    encoder.zero_grad()
    nlp.update(examples_for(nlp, entities=False), sgd=False)  # parses only: the NER head has no loss
    backbone_grad = encoder.backbone.encoder.layer[0].attention.self.query.weight.grad
    assert backbone_grad is not None and backbone_grad.abs().sum() > 0
    assert all(ramp[1].weight.grad is None or ramp[1].weight.grad.abs().sum() == 0 for ramp in encoder.ramps)


def reference_states(nlp, text: str, layer: int) -> numpy.ndarray:
    """The backbone's own hidden states after `layer` (full depth, no early exit) at each token's first piece."""
    shim = get_shim(nlp.get_pipe("tokee_transformer").model)
    encoding = shim.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        hidden = shim.encoder.backbone(input_ids=encoding["input_ids"], output_hidden_states=True).hidden_states[layer][0]
    # Special tokens have empty (0, 0) offsets: not a token's piece.
    starts = [start if end > start else -1 for start, end in encoding["offset_mapping"][0].tolist()]
    doc = nlp.make_doc(text)
    return numpy.stack([hidden[starts.index(token.idx)].numpy() for token in doc])


@pytest.mark.parametrize("exit_mode, threshold, layer", [("off", 0.5, 4), ("tokee", 1.0, 1)])
def test_features_are_each_tokens_state_at_its_exit_layer(with_parser, exit_mode, threshold, layer):
    text = "I like London and Berlin."
    with with_parser.get_pipe("tokee_transformer").using(exit_mode=exit_mode, threshold=threshold):
        doc = with_parser(text)
    assert doc._.early_exit["tokee_transformer"]["exit_layers"] == [layer] * len(doc)
    numpy.testing.assert_allclose(doc.tensor, reference_states(with_parser, text, layer), atol=1e-4)


def test_the_parser_does_not_change_the_exits(with_parser, tiny_model_dir):
    # The same encoder without the parser: same exit layers and entities.
    alone = make_pipeline(tiny_model_dir, parser=False, **SHARP)
    alone.initialize(lambda: examples_for(alone))
    source = get_shim(with_parser.get_pipe("tokee_transformer").model).encoder
    get_shim(alone.get_pipe("tokee_transformer").model).encoder.load_state_dict(source.state_dict())
    alone.get_pipe("tokee_ner").from_bytes(with_parser.get_pipe("tokee_ner").to_bytes())
    got = [(d._.early_exit, [(e.start, e.end, e.label_) for e in d.ents]) for d in with_parser.pipe(TEXTS)]
    expected = [(d._.early_exit, [(e.start, e.end, e.label_) for e in d.ents]) for d in alone.pipe(TEXTS)]
    assert got == expected
    assert any(layers != [4] * len(layers) for record, _ in got for layers in [record["tokee_transformer"]["exit_layers"]])


def test_stage_two_trains_a_parser_on_the_forced_exits(tiny_model_dir):
    from spacy_early_exit.encoder.planner import TrainingSettings

    nlp = trained(tiny_model_dir, steps=2)
    transformer = nlp.get_pipe("tokee_transformer")
    transformer.training = TrainingSettings.from_config({"mode": "self_sampling", "loss": "flooding"})
    optimizer = nlp.create_optimizer()
    for _ in range(2):
        losses = nlp.update(examples_for(nlp), sgd=optimizer)
    assert transformer._planner is not None
    assert all(numpy.isfinite(v) for v in losses.values()) and losses["parser"] > 0


def test_a_parser_whose_upstream_did_not_run_is_one_clear_error(with_parser):
    with with_parser.select_pipes(disable=["tokee_transformer", "tokee_ner"]):
        with pytest.raises(ValueError, match="has not processed this doc"):
            with_parser("I like London.")


def test_a_feature_listener_needs_a_head_to_decide_the_exits(tiny_model_dir):
    nlp = make_pipeline(tiny_model_dir, head=False)
    examples = examples_for(nlp, entities=False)
    nlp.initialize(lambda: examples)
    for run in (lambda: nlp.update(examples), lambda: nlp("I like London.")):
        with pytest.raises(ValueError, match="no early-exit head to decide when tokens exit"):
            run()


@pytest.mark.parametrize("settings", [{"upstream": ""}, {"width": 0}, {"width": "384"}])
def test_bad_listener_settings_are_one_clear_error(settings):
    with pytest.raises(ValueError, match="upstream|width"):
        build_early_exit_tok2vec_listener(**settings)


def test_the_parser_benchmark_trains_and_scores_every_setting(tiny_model_dir, tmp_path):
    # benchmarks/parser_on_exits.py: its config (configs/shared.cfg with the
    # parser in place of NER) on the tiny backbone, a few updates, then `score`.
    import json
    import sys
    from pathlib import Path

    from spacy.tokens import DocBin

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import parser_on_exits

    config = parser_on_exits.parser_config().merge({"paths": {"backbone": str(tiny_model_dir)}}).interpolate()
    config["components"]["parser"]["min_action_freq"] = 1
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names == ["tokee_transformer", "tokee_tagger", "parser"]
    examples = [Example.from_dict(nlp.make_doc(t), {"heads": h, "deps": d, "pos": p.split()})
                for (t, h, d, _), p in zip(PARSES, ["PRON VERB NOUN PUNCT VERB NOUN PUNCT", "PRON VERB PROPN CCONJ PROPN PUNCT"])]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    nlp.to_disk(tmp_path / "stage1")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        DocBin(docs=[eg.reference for eg in examples]).to_disk(corpus / f"{split}.spacy")
    # Stage 2 on the loaded stage-1 pipeline: self-sampling, every component keeps its weights.
    parser_weights = nlp.get_pipe("parser").model.get_ref("lower").get_param("W").copy()
    parser_on_exits.stage_two(tmp_path / "stage1", corpus, tmp_path / "stage2", max_steps=2, eval_frequency=1, threads=1)
    stage2 = spacy.load(tmp_path / "stage2" / "model-last")
    assert stage2.get_pipe("tokee_transformer").training.mode == "self_sampling"
    moved = stage2.get_pipe("parser").model.get_ref("lower").get_param("W") - parser_weights
    assert 0 < numpy.abs(moved).max() < 0.1  # trained on, not initialized afresh
    output = tmp_path / "parser.json"
    parser_on_exits.score_settings(tmp_path / "stage2" / "model-last", corpus / "test.spacy", tuned=None, static="2",
                                   limit=0, threads=1, output=output)
    report = json.loads(output.read_text(encoding="utf8"))
    assert [r["setting"] for r in report["rows"]] == ["full", "static-2"]
    full, static = report["rows"]
    assert full["flops_speedup"] == 1.0 and static["flops_speedup"] > 1.5
    assert all(0 <= r[m] <= 100 for r in report["rows"] for m in ("dep_las", "dep_uas", "pos_acc"))
    assert output.with_suffix(".md").exists()


def test_long_documents_and_every_precision_give_every_token_its_features(with_parser, tiny_model_dir):
    # A doc longer than max_length runs as several windows; each token's
    # features come from the window that owns it.
    text = " ".join(text for text, *_ in PARSES) * 3
    transformer = with_parser.get_pipe("tokee_transformer")
    reference = with_parser(text)
    short = trained(tiny_model_dir, steps=1, model={"name": str(tiny_model_dir), "max_length": 8})
    doc = short(text)
    assert doc.tensor.shape == (len(doc), 32) and numpy.isfinite(doc.tensor).all()
    assert (numpy.abs(doc.tensor).sum(axis=1) > 0).all()  # every token has wordpieces here
    for precision in ("bf16", "int8"):
        with transformer.using(precision=precision):
            other = with_parser(text)
        assert other.tensor.shape == reference.tensor.shape and other.tensor.dtype == numpy.float32
        assert numpy.abs(other.tensor - reference.tensor).mean() < 0.1 * numpy.abs(reference.tensor).mean()


@pytest.mark.slow
def test_n_process_two_gives_the_same_parses_and_features(with_parser):
    one = parses(with_parser)
    two = [([(t.head.i, t.dep_) for t in doc], doc._.early_exit, doc.tensor)
           for doc in with_parser.pipe(TEXTS, batch_size=2, n_process=2)]
    assert [(a, r) for a, r, _ in two] == [(a, r) for a, r, _ in one]
    assert all(numpy.allclose(x, y, atol=1e-5) for (_, _, x), (_, _, y) in zip(two, one))


def test_replace_listeners_is_one_clear_error(tiny_model_dir):
    nlp = trained(tiny_model_dir, steps=1)
    with pytest.raises(ValueError, match="replace_listeners does not work with a tokee_transformer"):
        nlp.replace_listeners("tokee_transformer", "parser", ["model.tok2vec"])
