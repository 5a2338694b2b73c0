"""Everything the package registers resolves through entry points, with no import."""
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

GROUPS = ("spacy_factories", "spacy_architectures", "spacy_scorers")


def registered():
    found = []
    for group in GROUPS:
        for ep in entry_points(group=group):
            if ep.value.startswith("spacy_early_exit"):
                found.append((group, ep.name))
    return found


def test_the_package_registers_its_names():
    names = {name for _, name in registered()}
    assert {
        "tokee_ner", "tokee_tagger", "tokee_segmenter", "tokee_transformer",
        "spacy-early-exit.EarlyExitTransformer.v1", "spacy-early-exit.EarlyExitListener.v1",
        "spacy-early-exit.EarlyExitTok2VecListener.v1",
    } <= names


@pytest.mark.slow
@pytest.mark.parametrize("group, name", registered())
def test_each_registered_name_resolves_in_a_fresh_process(group, name):
    # A fresh interpreter that never imports spacy_early_exit itself.
    code = {
        "spacy_factories": "import spacy; from spacy.language import Language; "
        f"assert Language.has_factory({name!r}) or spacy.blank('en').add_pipe({name!r}) is not None; "
        f"Language.get_factory_meta({name!r})",
        "spacy_architectures": f"from spacy.util import registry; assert callable(registry.architectures.get({name!r}))",
        "spacy_scorers": f"from spacy.util import registry; assert callable(registry.scorers.get({name!r}))",
    }[group]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_add_pipe_by_name_in_a_fresh_process():
    code = "import spacy; nlp = spacy.blank('en'); p = nlp.add_pipe('tokee_ner'); print(type(p).__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "spacy_early_exit.pipes.ner"  # the package's class, found by entry point
