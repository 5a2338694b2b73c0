"""Pytest fixtures over the tiny in-memory models of spacy_early_exit.testing."""
from pathlib import Path
from typing import Iterator

import pytest
import torch
from spacy.language import Language

# NER_DATA is re-exported for tests/annotate_helpers.py, which still imports
# the helpers from `conftest`; new code imports spacy_early_exit.testing.
from spacy_early_exit.testing import NER_DATA, make_ner_nlp, save_tiny_backbone  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one thread; two threads also fight any other
    process on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def trained_ner(tiny_model_dir: Path) -> Language:
    # Sharp temperatures make the tiny random model confident enough to exit.
    return make_ner_nlp(tiny_model_dir, steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)
