"""Hardening: broken pipeline folders, bad settings, missing backbones, bad training data.

Each problem fails with one ValueError (or BackboneNotFound) that names it,
never loads with random weights, and never crashes deep inside torch.
"""
import io
import math
import shutil
import warnings

import pytest
import spacy
import srsly
import torch
from spacy.tokens import Doc
from spacy.training import Example

from spacy_early_exit.encoder.backbone import BackboneNotFound
from spacy_early_exit.testing import ner_examples

# -- broken pipeline folders -----------------------------------------------------


@pytest.fixture(scope="module")
def saved(trained_ner, tmp_path_factory):
    path = tmp_path_factory.mktemp("hardening-saved") / "pipeline"
    trained_ner.to_disk(path)
    return path


def edit_shim(folder, change):
    """Rewrite the encoder's record inside the component's weights file."""
    path = folder / "tokee_ner" / "model"
    msg = srsly.msgpack_loads(path.read_bytes())
    (index, shim_bytes), = [(i, s[0]) for i, s in enumerate(msg["shims"]) if s]
    record = srsly.msgpack_loads(shim_bytes)
    change(record)
    msg["shims"][index] = [srsly.msgpack_dumps(record)]
    path.write_bytes(srsly.msgpack_dumps(msg))


def edit_cfg(folder, change):
    path = folder / "tokee_ner" / "cfg"
    cfg = srsly.read_json(path)
    change(cfg)
    srsly.write_json(path, cfg)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "weights file missing": (lambda d: (d / "tokee_ner" / "model").unlink(), r"tokee_ner/model \(its weights\) is missing"),
    "weights file truncated": (lambda d: truncate(d / "tokee_ner" / "model"), r"'tokee_ner' could not be loaded .*truncated"),
    "weights file empty": (lambda d: (d / "tokee_ner" / "model").write_bytes(b""), r"'tokee_ner' could not be loaded .*truncated"),
    "weights file garbage": (lambda d: (d / "tokee_ner" / "model").write_bytes(b"\x93garbage" * 50), r"'tokee_ner' could not be loaded"),
    "torch state truncated": (
        lambda d: edit_shim(d, lambda r: r.update(state=r["state"][: len(r["state"]) // 2])),
        r"'tokee_ner' could not be loaded .*encoder weights",
    ),
    "backbone config changed": (
        lambda d: edit_shim(d, lambda r: r["backbone_config"].update(num_hidden_layers=3)),
        r"(?s)'tokee_ner' could not be loaded .*encoder weights.*Unexpected key",
    ),
    "labels file missing": (lambda d: (d / "tokee_ner" / "cfg").unlink(), r"tokee_ner/cfg \(its labels\) is missing"),
    "a label added": (
        lambda d: edit_cfg(d, lambda c: c.update(labels=c["labels"] + ["MISC"])),
        r"off-ramps predict 7 classes but its labels .*MISC.* need 9",
    ),
    "a label removed": (lambda d: edit_cfg(d, lambda c: c.update(labels=c["labels"][:2])), r"off-ramps predict 7 classes"),
    "tag scheme changed": (lambda d: edit_cfg(d, lambda c: c.update(tag_scheme="BILUO")), r"off-ramps predict 7 classes"),
}


@pytest.mark.parametrize("problem", list(CORRUPTIONS))
def test_broken_pipeline_folder_fails_naming_the_problem(saved, tmp_path, problem):
    corrupt, message = CORRUPTIONS[problem]
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    corrupt(folder)
    with pytest.raises(ValueError, match=message) as info:
        spacy.load(folder)
    # One error: ours, with the cause attached, not one raised while handling another.
    assert info.value.__context__ is None or info.value.__cause__ is info.value.__context__


class CodeOnLoad:
    """What a crafted weights file can hold: unpickling it runs `source`."""

    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def weights_with_payload(marker):
    """Saved encoder weights with one extra entry that, unpickled, creates `marker`."""

    def change(record):
        state = torch.load(io.BytesIO(record["state"]), weights_only=True)
        state["payload"] = CodeOnLoad(f"open({str(marker)!r}, 'w').close()")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        record["state"] = buffer.getvalue()

    return change


def test_weights_holding_a_pickled_object_are_refused_unrun(saved, tmp_path):
    from spacy_early_exit.loading import PipelineError, load_pipeline

    folder = tmp_path / "crafted"
    shutil.copytree(saved, folder)
    marker = tmp_path / "payload-ran"
    edit_shim(folder, weights_with_payload(marker))
    # The payload is real: an unguarded torch.load runs it.
    edit_shim(folder, lambda record: torch.load(io.BytesIO(record["state"]), weights_only=False))
    assert marker.exists()
    marker.unlink()

    refusal = r"'model' file\) hold a pickled Python object \((builtins\.)?exec\) besides tensors; refused without loading it"
    with pytest.raises(ValueError, match=r"'tokee_ner' could not be loaded from .*crafted.*" + refusal) as info:
        spacy.load(folder)
    assert "\n" not in str(info.value)
    with pytest.raises(PipelineError, match=r"Cannot load the pipeline .*crafted.*" + refusal) as info:
        load_pipeline(folder)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_truncated_component_bytes_fail_naming_the_component(trained_ner):
    data = trained_ner.get_pipe("tokee_ner").to_bytes()
    fresh = spacy.util.load_model_from_config(trained_ner.config)
    with pytest.raises(ValueError, match="'tokee_ner' could not be loaded from its serialized bytes"):
        fresh.get_pipe("tokee_ner").from_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError):
        fresh.from_bytes(trained_ner.to_bytes()[:-100])


def test_intact_folder_loads_the_saved_weights(saved, trained_ner):
    texts = ["John Smith lives in London .", "Google is in Paris"]
    expected = [d._.early_exit for d in trained_ner.pipe(texts)]
    assert [d._.early_exit for d in spacy.load(saved).pipe(texts)] == expected


# -- bad settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("threshold", 1.5),
        ("threshold", -0.01),
        ("threshold", math.nan),
        ("window", -1),
        ("exit_mode", "fastest"),
        ("thresholds", [0.1, 0.2, 0.3]),  # 4 layers
        ("thresholds", [0.1, 2.0, 0.1, 0.1]),
        ("temperatures", [1.0, 1.0, 1.0]),
        ("temperatures", [1.0, 0.0, 1.0, 1.0]),
        ("temperatures", [1.0, math.inf, 1.0, 1.0]),
    ],
)
def test_out_of_range_setting_fails_at_load_naming_the_field(saved, field, value):
    with pytest.raises(ValueError, match=f"'{field}'"):
        spacy.load(saved, config={f"components.tokee_ner.{field}": value})


def test_per_layer_lists_of_the_wrong_length_fail_at_initialize(tiny_model_dir):
    for field in ("temperatures", "thresholds"):
        nlp = spacy.blank("en")
        nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}, field: [0.5] * 6})
        with pytest.raises(ValueError, match=f"'{field}' has 6 values but the encoder has 4 layers"):
            nlp.initialize(lambda: ner_examples(nlp))


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-org/no-such-model", r"tried the Hugging Face id 'no-such-org/no-such-model' \(HF_HUB_OFFLINE is set"),
        ("pkg:no_such_backbone_package", r"package 'no_such_backbone_package' is not installed"),
        ("/no/such/folder", "no such local directory"),
    ],
)
def test_unknown_backbone_offline_fails_naming_what_was_tried(monkeypatch, name, message):
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True, raising=False)
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": name}})
    with pytest.raises(BackboneNotFound, match=message):
        nlp.initialize(lambda: ner_examples(nlp))


def test_local_folder_without_config_fails(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tmp_path)}})
    with pytest.raises(BackboneNotFound, match="has no config.json"):
        nlp.initialize(lambda: ner_examples(nlp))


# -- training data -------------------------------------------------------------------


@pytest.fixture()
def trainable(tiny_model_dir):
    from spacy_early_exit.testing import make_ner_nlp

    nlp = make_ner_nlp(tiny_model_dir, steps=1)
    return nlp, nlp.resume_training()


def update(nlp, optimizer, examples):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = nlp.update(examples, sgd=optimizer)
    # The component reports its loss even for a batch with nothing to learn.
    loss = losses["tokee_ner"]
    assert math.isfinite(loss)
    return loss, [str(w.message) for w in caught]


def test_entities_that_do_not_align_warn_in_spacys_words(trainable):
    nlp, optimizer = trainable
    with pytest.warns(UserWarning, match=r"\[W030\] Some entities could not be aligned"):
        example = Example.from_dict(nlp.make_doc("John Smith lives here"), {"entities": [(1, 7, "PER")]})
    loss, _ = update(nlp, optimizer, [example] + ner_examples(nlp))
    assert loss > 0


def test_reference_with_other_tokenization_trains(trainable):
    nlp, optimizer = trainable
    predicted = nlp.make_doc("NewYork is big")
    reference = Doc(nlp.vocab, words=["New", "York", "is", "big"], spaces=[False, True, True, False], ents=["B-LOC", "I-LOC", "O", "O"])
    loss, _ = update(nlp, optimizer, [Example(predicted, reference)])
    assert loss > 0


@pytest.mark.parametrize("mode", ["joint", "self_sampling"])
def test_empty_and_unreadable_examples_train(tiny_model_dir, mode):
    from spacy_early_exit.testing import make_ner_nlp

    nlp = make_ner_nlp(tiny_model_dir, steps=1, training={"mode": mode})
    optimizer = nlp.resume_training()
    empties = [Example.from_dict(nlp.make_doc(t), {"entities": []}) for t in ("", "   \n ", "\x00\x07 \u200b")]
    loss, _ = update(nlp, optimizer, empties)
    assert loss == 0.0
    loss, _ = update(nlp, optimizer, empties + ner_examples(nlp))
    assert loss > 0
    ner = nlp.get_pipe("tokee_ner")
    logits, gold = ner.layer_logits(empties)
    assert logits.shape == (4, 0, len(ner.class_names)) and gold.shape == (0,)


def test_label_unseen_at_initialize_warns_and_is_ignored(trainable):
    nlp, optimizer = trainable
    example = Example.from_dict(nlp.make_doc("John works at Acme"), {"entities": [(0, 4, "PER"), (14, 18, "COMPANY")]})
    loss, messages = update(nlp, optimizer, [example])
    assert loss > 0
    assert any("not initialized with: ['B-COMPANY']" in m for m in messages)
    scores = nlp.evaluate([example])
    assert "COMPANY" in scores["ents_per_type"] and scores["ents_per_type"]["COMPANY"]["r"] == 0.0


def test_texts_that_differ_fail_with_spacys_alignment_error(trainable):
    nlp, optimizer = trainable
    example = Example(nlp.make_doc("John lives"), Doc(nlp.vocab, words=["Mary", "runs"], ents=["B-PER", "O"]))
    with pytest.raises(ValueError, match=r"\[E949\]"):
        nlp.update([example], sgd=optimizer)


def test_initialize_on_examples_without_entities_says_so(tiny_model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    with pytest.raises(ValueError, match="found no labels"):
        nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(t), {"entities": []}) for t in ("", "no names")])
