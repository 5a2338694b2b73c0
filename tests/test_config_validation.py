"""A bad exit field in a config fails in a few lines that name it (spaCy's config checks)."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, get_args

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_early_exit.encoder.exits import EXIT_MODES
from spacy_early_exit.encoder.precision import PRECISIONS
from spacy_early_exit.loading import PipelineError, load_pipeline
from spacy_early_exit.pipes.settings import ExitMode, Precision
from spacy_early_exit.testing import NER_DATA, make_ner_nlp

PROJECT = Path(__file__).parent.parent / "project"
FACTORIES = ("tokee_ner", "tokee_tagger", "tokee_segmenter")
# field -> (a bad value, words the error must contain)
BAD_FIELDS: Dict[str, Any] = {
    "threshold": (2.0, "2.0 is not a number in [0, 1]"),
    "window": (-1, "-1 is not an integer >= 0"),
    "exit_mode": ("fast", "'fast' is not"),
    "precision": ("fp8", "'fp8' is not"),
    "thresholds": ([0.1, 0.2, 3, 0.1], "3 is not a number in [0, 1]"),
    "temperatures": ([1.0, 0.0, 1.0, 1.0], "0.0 is not a positive finite number"),
}


def test_the_literal_choices_match_the_encoder():
    assert get_args(ExitMode) == EXIT_MODES
    assert get_args(Precision) == PRECISIONS


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
@pytest.mark.parametrize("factory", FACTORIES)
def test_add_pipe_fails_before_building_the_model(factory, field):
    value, words = BAD_FIELDS[field]
    # A backbone that does not exist: the check must come before the model is built.
    config = {field: value, "model": {"name": str(Path("/no/such/backbone"))}}
    with pytest.raises(ValueError) as info:
        spacy.blank("en").add_pipe(factory, config=config)
    assert f"{factory} -> {field}" in str(info.value) and words in str(info.value)


def test_the_tagger_attribute_is_checked_too():
    with pytest.raises(ValueError, match=r"tokee_tagger -> attribute\s+at root: 'lemma' is not"):
        spacy.blank("en").add_pipe("tokee_tagger", config={"attribute": "lemma", "model": {"name": "/no/such/backbone"}})


def test_good_values_still_load(tiny_model_dir, tmp_path):
    make_ner_nlp(tiny_model_dir).to_disk(tmp_path / "pipe")
    fields = {"threshold": 1, "window": 0, "exit_mode": "sentee", "precision": "bf16", "thresholds": [0, 0, 1, 1], "temperatures": [1, 2.5, 1, 1]}
    pipe = spacy.load(tmp_path / "pipe", config={f"components.tokee_ner.{k}": v for k, v in fields.items()}).get_pipe("tokee_ner")
    assert (pipe.threshold, pipe.window, pipe.exit_mode, pipe.precision) == (1.0, 0, "sentee", "bf16")
    assert list(pipe.thresholds) == [0, 0, 1, 1] and list(pipe.temperatures) == [1, 2.5, 1, 1]


def test_spacy_load_names_the_field(tiny_model_dir, tmp_path):
    make_ner_nlp(tiny_model_dir).to_disk(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"tokee_ner -> threshold\s+at root: 2.0 is not a number in \[0, 1\]"):
        spacy.load(tmp_path / "pipe", config={"components.tokee_ner.threshold": 2.0})
    # The package's loader keeps the field line, not spaCy's dump of the config.
    with pytest.raises(PipelineError) as info:
        load_pipeline(tmp_path / "pipe", config={"components.tokee_ner.threshold": 2.0, "components.tokee_ner.window": -2})
    assert str(info.value) == (
        f"Cannot load the pipeline {tmp_path / 'pipe'}: tokee_ner -> threshold: 2.0 is not a number in [0, 1]; "
        "tokee_ner -> window: -2 is not an integer >= 0"
    )


def test_spacy_train_fails_in_a_few_lines_naming_the_field(tiny_model_dir, tmp_path):
    nlp = spacy.blank("en")
    docs = []
    for text, entities in NER_DATA:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in entities]
        docs.append(doc)
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    config = (PROJECT / "configs" / "ner.cfg").read_text(encoding="utf8")
    assert "\nthreshold = 0.1\n" in config
    (tmp_path / "ner.cfg").write_text(config.replace("\nthreshold = 0.1\n", "\nthreshold = 2.0\n", 1), encoding="utf8")
    corpus = str(tmp_path / "train.spacy")
    command = [
        sys.executable, "-m", "spacy", "train", str(tmp_path / "ner.cfg"), "--paths.train", corpus, "--paths.dev", corpus,
        "--paths.backbone", str(tiny_model_dir), "--training.max_steps", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    assert len(output) <= 15 and "Traceback" not in result.stderr, "\n".join(output)
    assert any("tokee_ner -> threshold" in line and "2.0 is not a number in [0, 1]" in line for line in output), "\n".join(output)
