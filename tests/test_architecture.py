"""The layering of docs/architecture.md, checked on the source: imports run down only."""
import ast
import inspect
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spacy_early_exit"
# The first matching prefix gives a module's layer (docs/architecture.md).
LAYERS: List[Tuple[str, int]] = [
    ("memory", 0), ("threads", 0),
    ("encoder", 1),
    ("layers", 2),
    ("pipes", 3), ("scorers", 3), ("tokenizers", 3), ("loggers", 3),
    ("tools", 4), ("loading", 4), ("testing", 4),
    ("cli", 5), ("cli_annotate", 5), ("cli_checks", 5), ("cli_visualize", 5), ("annotate", 5), ("__main__", 5),
]
MAX_LINES = 350
MAX_FACTORY_PARAMETERS = 14


def layer_of(module: str) -> int:
    """module (str): a dotted name inside the package, e.g. "pipes.base"."""
    top = module.split(".")[0]
    for prefix, layer in LAYERS:
        if top == prefix:
            return layer
    raise AssertionError(f"spacy_early_exit.{module} is in no layer of docs/architecture.md")


def package_modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts == ["__init__"]:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imported_modules(module: str, path: Path) -> Iterator[str]:
    """Package-internal modules `module` imports, anywhere in the file (lazy imports too)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = anchor + (node.module.split(".") if node.module else [])
                if node.module is None:  # from . import x
                    for alias in node.names:
                        yield ".".join(target + [alias.name])
                    continue
                yield ".".join(target)
            elif node.module and node.module.startswith("spacy_early_exit."):
                yield node.module[len("spacy_early_exit."):]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("spacy_early_exit."):
                    yield alias.name[len("spacy_early_exit."):]


MODULES = list(package_modules())


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_import_runs_upward(module, path):
    own = layer_of(module)
    upward = [(target, layer_of(target)) for target in imported_modules(module, path) if target and layer_of(target) > own]
    assert not upward, f"{module} (layer {own}) imports from above: {upward}"


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_module_size(module, path):
    lines = len(path.read_text(encoding="utf8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (most: {MAX_LINES})"


def test_the_encoder_knows_neither_spacy_nor_thinc():
    for module, path in MODULES:
        if not module.startswith("encoder"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            )
            assert not any(n.split(".")[0] in ("spacy", "thinc") for n in names), f"{module} imports {names}"


def test_the_checker_sees_an_upward_import(tmp_path):
    # The rule must be able to fail: a layer-1 file importing a pipe is caught.
    fake = tmp_path / "bad.py"
    fake.write_text("from ..pipes.base import EarlyExitPipe\n", encoding="utf8")
    targets = list(imported_modules("encoder.bad", fake))
    assert targets == ["pipes.base"] and layer_of(targets[0]) > layer_of("encoder.bad")


def test_factories_stay_small():
    from spacy_early_exit.pipes.ner import make_tokee_ner
    from spacy_early_exit.pipes.segmenter import make_tokee_segmenter
    from spacy_early_exit.pipes.tagger import make_tokee_tagger
    from spacy_early_exit.pipes.transformer import make_tokee_transformer

    for factory in (make_tokee_ner, make_tokee_tagger, make_tokee_segmenter, make_tokee_transformer):
        count = len(inspect.signature(factory).parameters)
        assert count <= MAX_FACTORY_PARAMETERS, f"{factory.__name__} has {count} parameters"
