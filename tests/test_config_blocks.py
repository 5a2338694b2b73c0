"""The nested config blocks (fine_tuning, memory), and pipelines saved with the old flat fields."""
import pytest
import spacy
from spacy.util import load_config
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.loading import PipelineError, load_pipeline
from spacy_early_exit.testing import make_ner_nlp
from spacy_early_exit.tools.migrate import migrate_pipeline, moved_fields


@pytest.mark.parametrize(
    "config,message",
    [
        ({"fine_tuning": {"learn_rate": -1}}, "'fine_tuning.learn_rate' must be positive or null; got -1"),
        ({"fine_tuning": {"warmup_steps": 1.5}}, "'fine_tuning.warmup_steps' must be an integer >= 0"),
        ({"fine_tuning": {"extend_vocab": "yes"}}, "'fine_tuning.extend_vocab' must be true or false"),
        ({"fine_tuning": {"lr": 0.1}}, "Unknown 'fine_tuning' settings ['lr']"),
        ({"memory": {"heap_trim_interval": -5}}, "'memory.heap_trim_interval' must be an integer >= 0"),
    ],
)
def test_a_bad_block_value_names_the_field(config, message):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError) as err:
        nlp.add_pipe("tokee_ner", config=config)
    assert message in str(err.value)


def test_block_values_reach_the_pipe_and_survive_a_load(tiny_model_dir, tmp_path):
    nlp = make_ner_nlp(tiny_model_dir, fine_tuning={"backbone_lr_factor": 0.25}, memory={"heap_trim_interval": 7})
    pipe = nlp.get_pipe("tokee_ner")
    assert pipe.fine_tuning.backbone_lr_factor == 0.25 and pipe.memory.heap_trim_interval == 7
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components.tokee_ner.fine_tuning.warmup_steps": 3})
    again = loaded.get_pipe("tokee_ner")
    assert again.fine_tuning.backbone_lr_factor == 0.25
    assert again.fine_tuning.warmup_steps == 3
    assert again.heap_trimmer.interval == 7


def flatten_like_version_0_1(path):
    """Rewrite a saved config the way version 0.1 wrote it: block fields at the top level."""
    config = load_config(path / "config.cfg", interpolate=False)
    block = config["components"]["tokee_ner"]
    for name in ("fine_tuning", "memory"):
        block.update(block.pop(name))
    config.to_disk(path / "config.cfg")


def test_an_old_pipeline_fails_in_one_line_then_migrates_and_loads(tiny_model_dir, tmp_path):
    nlp = make_ner_nlp(tiny_model_dir, steps=2)
    path = tmp_path / "old"
    nlp.to_disk(path)
    flatten_like_version_0_1(path)
    expected = nlp("John Smith lives in New York .")
    moves = moved_fields(load_config(path / "config.cfg", interpolate=False))
    assert ("components.tokee_ner.learn_rate", "components.tokee_ner.fine_tuning.learn_rate") in moves
    assert ("components.tokee_ner.heap_trim_interval", "components.tokee_ner.memory.heap_trim_interval") in moves
    with pytest.raises(PipelineError) as err:
        load_pipeline(path)
    assert "fine_tuning.learn_rate" in str(err.value) and f"migrate {path}" in str(err.value)

    result = CliRunner().invoke(app, ["migrate", str(path)])
    assert result.exit_code == 0, result.output
    assert "components.tokee_ner.warmup_steps -> components.tokee_ner.fine_tuning.warmup_steps" in result.output
    assert (path / "config.cfg.bak").is_file()
    migrated = load_pipeline(path)
    doc = migrated("John Smith lives in New York .")
    assert [(e.text, e.label_) for e in doc.ents] == [(e.text, e.label_) for e in expected.ents]
    assert doc._.early_exit == expected._.early_exit
    assert migrate_pipeline(path) == []  # a second run has nothing to move
