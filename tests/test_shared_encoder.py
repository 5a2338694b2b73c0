"""One early-exit encoder shared by several task heads (tokee_transformer + listeners)."""
import math
from pathlib import Path

import pytest
import spacy
import srsly
import torch
from thinc.api import Config, fix_random_seed

from spacy_early_exit.encoder.exits import ExitPolicy, exit_decisions, joint_uncertainty, normalized_entropy
from spacy_early_exit.encoder.model import EarlyExitEncoder
from spacy_early_exit.encoder.planner import ExitPlanner, TrainingSettings
from spacy_early_exit.layers.architecture import get_shim
from spacy_early_exit.layers.listener import HEADS_KEY
from spacy_early_exit.layers.shim import EarlyExitShim
from spacy_early_exit.annotate.rows import RowSpec
from spacy_early_exit.pipes.listening import ListeningHead
from spacy_early_exit.testing import (
    LISTENER,
    NER_DATA,
    make_ner_nlp,
    make_shared_nlp,
    shared_examples,
    tiny_backbone,
)
from spacy_early_exit.tools.evaluate import cost_summary, early_exit_pipes, exit_settings, score
from test_encoder import BATCH, make_batch

TEXTS = [text for text, _ in NER_DATA] + ["London", "the city said one two three", "John  and\n\nMary ."]
SHARP = {"threshold": 0.5, "window": 1, "temperatures": [0.25] * 4}


def outputs(nlp, texts, **kwargs):
    """Per doc: entities, tags and the shared encoder's record."""
    return [
        ([(e.start, e.end, e.label_) for e in doc.ents], [t.tag_ for t in doc], doc._.early_exit)
        for doc in nlp.pipe(texts, batch_size=3, **kwargs)
    ]


@pytest.fixture(scope="module")
def shared(tiny_model_dir):
    fix_random_seed(0)
    return make_shared_nlp(tiny_model_dir, steps=8, **SHARP)


def two_head_encoder(confident_b: bool) -> EarlyExitEncoder:
    """Heads of 3 and 4 classes: head A always confident; head B confident or uniform."""
    encoder = EarlyExitEncoder(tiny_backbone("bert"), head_sizes=(3, 4)).eval()
    with torch.no_grad():
        for ramp in encoder.ramps:
            ramp[1].weight.zero_()
            ramp[1].bias.copy_(torch.tensor([20.0, 0, 0] + ([20.0, 0, 0, 0] if confident_b else [0.0] * 4)))
    return encoder


# -- the joint rule -------------------------------------------------------------


def test_joint_uncertainty_is_the_max_over_heads_and_one_head_is_the_plain_rule():
    sure, unsure = torch.tensor([9.0, 0.0, 0.0]), torch.zeros(4)
    logits = torch.stack([torch.cat([sure, unsure]), torch.cat([sure, torch.tensor([9.0, 0, 0, 0])])])
    joint = joint_uncertainty(logits, (3, 4))
    assert joint[0].item() == pytest.approx(1.0)  # head B is uniform: the token is unsure
    assert joint[1].item() == pytest.approx(max(normalized_entropy(sure).item(), normalized_entropy(logits[1, 3:]).item()))
    assert torch.equal(joint_uncertainty(logits, (7,), (0.5,)), normalized_entropy(logits, 0.5))
    # A uniform head B keeps the token in, however sure head A is.
    leaving = exit_decisions(joint[None], torch.ones(1, 2, dtype=torch.bool), ExitPolicy(threshold=0.5, window=0), 1)
    assert leaving.tolist() == [[False, True]]


def test_a_token_never_halts_while_one_head_is_uncertain():
    batch = make_batch(**BATCH)
    policy = ExitPolicy(mode="tokee", threshold=0.5, window=0)
    with torch.no_grad():
        unsure = two_head_encoder(confident_b=False)(batch, policy)
        sure = two_head_encoder(confident_b=True)(batch, policy)
    mask = batch.word_mask
    assert (unsure.exit_layers[mask] == 4).all()
    assert (sure.exit_layers[mask] == 1).all()
    assert unsure.logits.shape[-1] == 7  # every head's columns, read at the joint exit layer


def test_per_head_temperatures_scale_each_head():
    batch = make_batch(**BATCH)
    encoder = two_head_encoder(confident_b=True)
    # A huge temperature on head B only makes it uniform: nobody leaves early.
    hot_b = ExitPolicy(threshold=0.5, window=0, head_temperatures=(None, (1e4,) * 4))
    with torch.no_grad():
        assert (encoder(batch, hot_b).exit_layers[batch.word_mask] == 4).all()
    with pytest.raises(ValueError, match="2 heads"):
        encoder(batch, ExitPolicy(head_temperatures=((1.0,) * 4,)))


def test_adding_a_head_keeps_the_other_heads_rows():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), head_sizes=())
    encoder.set_head(0, 3)
    before = encoder.ramps[0][1].weight.detach().clone()
    encoder.set_head(1, 4)
    assert encoder.head_sizes == (3, 4) and encoder.cost.n_classes == 7
    assert torch.equal(encoder.ramps[0][1].weight[:3], before)
    encoder.set_head(0, 2)  # new classes for head 0: fresh rows, head 1's kept
    assert encoder.head_sizes == (2, 4) and encoder.head_columns(1) == (2, 6)


def test_stage_two_plans_with_the_joint_rule():
    settings = TrainingSettings(mode="self_sampling", windows=(0,), thresholds=(0.5,), sandwich=(0.0, 0.0))
    batch = make_batch(**BATCH)
    mask = batch.word_mask
    assert (ExitPlanner(settings, two_head_encoder(False))(batch).exit_layers[mask] == 4).all()
    assert (ExitPlanner(settings, two_head_encoder(True))(batch).exit_layers[mask] == 1).all()


# -- the pipeline -------------------------------------------------------------------


def test_two_heads_train_save_load_and_predict_the_same(shared, tmp_path):
    transformer = shared.get_pipe("tokee_transformer")
    ner, tagger = shared.get_pipe("tokee_ner"), shared.get_pipe("tokee_tagger")
    assert isinstance(ner, ListeningHead) and isinstance(tagger, ListeningHead)
    assert transformer.head_names == ["tokee_ner", "tokee_tagger"]
    encoder = get_shim(transformer.model).encoder
    assert encoder.head_sizes == (len(ner.class_names), len(tagger.class_names))
    before = outputs(shared, TEXTS)
    assert [outputs(shared, [text])[0] for text in TEXTS] == before  # batch-invariant
    for _, _, records in before:
        assert list(records) == ["tokee_transformer"]  # one record: the heads write none
    assert any(tags != [""] * len(tags) for _, tags, _ in before)
    shared.to_disk(tmp_path / "shared")
    loaded = spacy.load(tmp_path / "shared")
    assert outputs(loaded, TEXTS) == before
    assert loaded.get_pipe("tokee_transformer").listening_components == ["tokee_ner", "tokee_tagger"]
    assert all(HEADS_KEY not in doc.user_data for doc in loaded.pipe(TEXTS))


def test_training_lowers_both_heads_losses(tiny_model_dir):
    fix_random_seed(0)
    nlp = make_shared_nlp(tiny_model_dir)
    examples = shared_examples(nlp)
    optimizer = nlp.create_optimizer()
    first = nlp.update(examples, sgd=optimizer)
    for _ in range(10):
        last = nlp.update(examples, sgd=optimizer)
    assert last["tokee_ner"] < first["tokee_ner"] and last["tokee_tagger"] < first["tokee_tagger"]


@pytest.mark.parametrize("entities,tags", [(True, False), (False, True)])
def test_each_heads_gradient_reaches_the_shared_encoder(tiny_model_dir, entities, tags):
    nlp = make_shared_nlp(tiny_model_dir)
    transformer = nlp.get_pipe("tokee_transformer")
    encoder = get_shim(transformer.model).encoder
    encoder.zero_grad()
    nlp.update(shared_examples(nlp, entities=entities, tags=tags), sgd=False)  # no step: gradients stay
    backbone_grad = encoder.backbone.encoder.layer[0].attention.self.query.weight.grad
    assert backbone_grad is not None and backbone_grad.abs().sum() > 0
    ramp_grad = encoder.ramps[1][1].weight.grad
    (a, b), (c, d) = transformer.head_columns("tokee_ner"), transformer.head_columns("tokee_tagger")
    taught, untaught = ((a, b), (c, d)) if entities else ((c, d), (a, b))
    assert ramp_grad[taught[0]:taught[1]].abs().sum() > 0
    assert ramp_grad[untaught[0]:untaught[1]].abs().sum() == 0


def test_one_head_on_a_shared_encoder_is_the_standalone_component(tiny_model_dir):
    fix_random_seed(0)
    alone = make_ner_nlp(tiny_model_dir, steps=5, **SHARP)
    shared = make_shared_nlp(tiny_model_dir, heads=("tokee_ner",), **SHARP)
    state = get_shim(alone.get_pipe("tokee_ner").model).encoder.state_dict()
    get_shim(shared.get_pipe("tokee_transformer").model).encoder.load_state_dict(state)
    for mode in ("tokee", "sentee", "off"):
        with alone.get_pipe("tokee_ner").using(exit_mode=mode), shared.get_pipe("tokee_transformer").using(exit_mode=mode):
            expected = [(d.ents, d._.early_exit["tokee_ner"]) for d in alone.pipe(TEXTS, batch_size=3)]
            got = [(d.ents, d._.early_exit["tokee_transformer"]) for d in shared.pipe(TEXTS, batch_size=3)]
        assert [[(e.start, e.end, e.label_) for e in ents] for ents, _ in got] == [
            [(e.start, e.end, e.label_) for e in ents] for ents, _ in expected
        ]
        assert [record for _, record in got] == [record for _, record in expected]


def test_a_listening_head_rejects_exit_fields(tiny_model_dir):
    nlp = make_shared_nlp(tiny_model_dir, heads=("tokee_ner",), threshold=0.3)
    ner = nlp.get_pipe("tokee_ner")
    assert ner.threshold == 0.3 and ner.policy == nlp.get_pipe("tokee_transformer").policy  # read from upstream
    for action in (lambda: setattr(ner, "threshold", 0.2), lambda: ner.using(window=0).__enter__()):
        with pytest.raises(ValueError, match="tokee_transformer") as err:
            action()
        assert "\n" not in str(err.value)
    blank = spacy.blank("en")
    blank.add_pipe("tokee_transformer")
    for field, value in (("threshold", 0.3), ("fine_tuning", {"learn_rate": 1e-3})):
        with pytest.raises(ValueError, match=f"'{field}' of 'tokee_tagger' lives on the 'tokee_transformer'"):
            blank.add_pipe("tokee_tagger", config={"model": dict(LISTENER), field: value})


def test_per_head_temperatures_by_name(shared):
    transformer = shared.get_pipe("tokee_transformer")
    with transformer.using(temperatures={"tokee_tagger": [2.0] * 4}) as policy:
        assert policy.head_temperatures == (None, (2.0,) * 4)
        assert transformer.temperatures == {"tokee_tagger": [2.0] * 4}
        transformer.threshold = 0.4  # another field keeps the per-head values
        assert transformer.policy.head_temperatures == (None, (2.0,) * 4)
    assert transformer.temperatures == [0.25] * 4 and transformer.threshold == 0.5
    with transformer.using(temperatures={"tokee_parser": [2.0] * 4}):
        with pytest.raises(ValueError, match="tokee_parser"):
            list(shared.pipe(TEXTS[:1]))
    with pytest.raises(ValueError, match="4 layers"):
        transformer.temperatures = {"tokee_ner": [1.0, 2.0]}


def test_flops_count_every_heads_off_ramps_once(shared):
    transformer = shared.get_pipe("tokee_transformer")
    encoder = get_shim(transformer.model).encoder
    widths = [len(shared.get_pipe(n).class_names) for n in ("tokee_ner", "tokee_tagger")]
    assert encoder.cost.n_classes == sum(widths)
    with transformer.using(exit_mode="off"):
        docs = list(shared.pipe(TEXTS))
    for doc in docs:
        record = doc._.early_exit["tokee_transformer"]
        assert record["flops"] == record["full_flops"]
    assert [name for name, _ in early_exit_pipes(shared)] == ["tokee_transformer"]
    assert cost_summary(docs, shared)["flops_speedup"] == 1.0
    with exit_settings(shared, {"threshold": 1.0}):
        scores, cost = score(shared, shared_examples(shared))
    assert {"ents_f", "tag_acc"} <= set(scores) and cost["mean_exit_layer"] == 1.0
    spec = RowSpec.from_nlp(shared)
    row = spec.annotate(docs[0])
    assert spec.components == ("tokee_transformer",) and {"ents", "tags"} <= set(row)
    assert row["flops"] == docs[0]._.early_exit["tokee_transformer"]["flops"]


def test_a_listening_segmenter_is_the_standalone_one(tmp_path):
    from test_segmenter import SEG_DATA, blank_zh, make_seg_nlp, save_cjk_backbone, seg_example

    model_dir = save_cjk_backbone(tmp_path / "cjk")
    alone = make_seg_nlp(model_dir, steps=3, **SHARP)
    nlp = blank_zh()
    nlp.add_pipe("tokee_transformer", config={"model": {"name": str(model_dir), "pretokenized": True}, **SHARP})
    nlp.add_pipe("tokee_segmenter", config={"model": dict(LISTENER)})
    nlp.initialize(lambda: [seg_example(nlp, line) for line in SEG_DATA])
    state = get_shim(alone.get_pipe("tokee_segmenter").model).encoder.state_dict()
    get_shim(nlp.get_pipe("tokee_transformer").model).encoder.load_state_dict(state)
    texts = ["我爱北京天安门", "北京是中国的首都。", "学生 在天安门", ""]
    expected = [([t.text for t in d], d._.early_exit["tokee_segmenter"]) for d in alone.pipe(texts)]
    got = [([t.text for t in d], d._.early_exit["tokee_transformer"]) for d in nlp.pipe(texts)]
    assert got == expected


def test_long_documents_and_precision_on_a_shared_encoder(tiny_model_dir):
    nlp = make_shared_nlp(tiny_model_dir, model={"max_length": 8}, **SHARP)
    text = " ".join(t for t, _ in NER_DATA)
    doc = nlp(text)
    assert len(doc._.early_exit["tokee_transformer"]["exit_layers"]) == len(doc)
    with nlp.get_pipe("tokee_transformer").using(precision="bf16"):
        assert len(nlp(text)) == len(doc)


def test_stage_two_runs_on_a_shared_pipeline(tiny_model_dir):
    nlp = make_shared_nlp(tiny_model_dir, steps=2, **SHARP)
    transformer = nlp.get_pipe("tokee_transformer")
    transformer.training = TrainingSettings.from_config({"mode": "self_sampling", "loss": "flooding"})
    examples = shared_examples(nlp)
    optimizer = nlp.create_optimizer()
    for _ in range(2):
        losses = nlp.update(examples, sgd=optimizer)
    assert transformer._planner is not None and transformer._planner.reference.head_sizes == (
        get_shim(transformer.model).encoder.head_sizes
    )
    assert all(math.isfinite(v) for v in losses.values())


def test_stage_two_starts_from_stage_one_through_init_from(shared, tmp_path):
    shared.to_disk(tmp_path / "stage1")
    config = shared.config.copy()
    config["components"]["tokee_transformer"]["training"]["mode"] = "self_sampling"
    config["initialize"]["components"] = {"tokee_transformer": {"init_from": str(tmp_path / "stage1")}}
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: shared_examples(nlp))
    with nlp.get_pipe("tokee_transformer").using(exit_mode="off"), shared.get_pipe("tokee_transformer").using(exit_mode="off"):
        assert outputs(nlp, TEXTS) == outputs(shared, TEXTS)


def test_a_standalone_pipeline_keeps_its_config_and_old_weights_load(tiny_model_dir, tmp_path):
    nlp = make_ner_nlp(tiny_model_dir)
    component = nlp.config["components"]["tokee_ner"]
    assert set(component) == {
        "factory", "model", "tag_scheme", "exit_mode", "threshold", "window", "thresholds",
        "temperatures", "precision", "fine_tuning", "training", "memory", "scorer",
    }
    assert component["model"]["@architectures"] == "spacy-early-exit.EarlyExitTransformer.v1"
    # Weights saved before shared encoders carry the class count only.
    shim = get_shim(nlp.get_pipe("tokee_ner").model)
    msg = srsly.msgpack_loads(shim.to_bytes())
    del msg["head_sizes"]
    old = EarlyExitShim().from_bytes(srsly.msgpack_dumps(msg))
    assert old.encoder.head_sizes == (len(nlp.get_pipe("tokee_ner").class_names),)
    nlp.to_disk(tmp_path / "alone")
    assert outputs(spacy.load(tmp_path / "alone"), TEXTS) == outputs(nlp, TEXTS)


@pytest.mark.slow
def test_n_process_two_gives_the_same_results(shared):
    assert outputs(shared, TEXTS, n_process=2) == outputs(shared, TEXTS)


def test_the_documented_config_builds_a_shared_pipeline(tiny_model_dir):
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf8")
    block = text.split("## One encoder for several components", 1)[1].split("```ini\n", 1)[1].split("```", 1)[0]
    config = Config().from_str(block)
    config["components"]["tokee_transformer"]["model"]["name"] = str(tiny_model_dir)
    config["components"]["tokee_transformer"]["temperatures"] = {"tokee_ner": [0.5] * 4}
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: shared_examples(nlp))
    assert nlp.get_pipe("tokee_transformer").policy.head_temperatures == ((0.5,) * 4, None)
    doc = nlp("John Smith lives in London")
    assert list(doc._.early_exit) == ["tokee_transformer"] and len(doc._.early_exit["tokee_transformer"]["exit_layers"]) == 5
