"""The exit fields as pipe attributes, and `pipe.using(...)` to run under another setting.

A pipe keeps its exit setting as one frozen :class:`ExitPolicy`. Each
attribute (``pipe.threshold = 0.3``) replaces the record, so the new value is
validated by the policy itself and takes effect on the next call.
"""
import dataclasses
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from ..encoder.exits import ExitPolicy

# Pipe attribute -> ExitPolicy field (the config says `exit_mode`, the policy `mode`).
POLICY_FIELDS = {
    "exit_mode": "mode",
    "threshold": "threshold",
    "window": "window",
    "thresholds": "thresholds",
    "temperatures": "temperatures",
    "precision": "precision",
}
PER_LAYER = ("thresholds", "temperatures")


class ExitField:
    """A pipe attribute that reads and replaces one field of the pipe's policy."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.field = POLICY_FIELDS[name]

    def __get__(self, pipe: Any, owner: Optional[type] = None) -> Any:
        if pipe is None:
            return self
        value = getattr(pipe.policy, self.field)
        return list(value) if self.field in PER_LAYER and value is not None else value

    def __set__(self, pipe: Any, value: Any) -> None:
        # ExitPolicy validates the value and stores per-layer lists as tuples.
        pipe.set_policy(dataclasses.replace(pipe.policy, **{self.field: value}))


class ExitSettings:
    """Mixin: the exit attributes over a `_policy`, checked against the depth.

    Subclasses provide `_policy` (an ExitPolicy) and `encoder_depth` (the
    number of layers, or None before initialization).
    """

    _policy: ExitPolicy

    exit_mode = ExitField('"tokee", "sentee" or "off".')
    threshold = ExitField("Exit when the (window) normalized entropy is below it.")
    window = ExitField("TOKEE's k: a token exits when the tokens within +-k are all certain.")
    thresholds = ExitField("One threshold per layer (overrides `threshold`), or None.")
    temperatures = ExitField("One calibration temperature per layer, or None.")
    precision = ExitField('The encoder layers\' precision at prediction: "fp32", "bf16", "int8", "int8-ort" or "fp32-ort".')

    @property
    def encoder_depth(self) -> Optional[int]:
        raise NotImplementedError

    @property
    def policy(self) -> ExitPolicy:
        """The exit settings as one immutable record."""
        return self._policy

    def set_policy(self, policy: ExitPolicy) -> None:
        """Replace the exit settings (checked against the encoder's depth)."""
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"Expected an ExitPolicy; got {type(policy).__name__}")
        depth = self.encoder_depth
        if depth is not None:
            policy.check_depth(depth)
        self._policy = policy

    @contextmanager
    def using(self, policy: Optional[ExitPolicy] = None, **changes: Any) -> Iterator[ExitPolicy]:
        """Run under another exit setting inside a ``with`` block, then restore.

        policy (Optional[ExitPolicy]): the setting to use; None = the pipe's own.
        changes: field changes on top of it, by attribute name
            (``exit_mode``, ``threshold``, ``window``, ``thresholds``,
            ``temperatures``, ``precision``).
        YIELDS (ExitPolicy): the setting in force.
        """
        unknown = set(changes) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"Unknown exit fields {sorted(unknown)}; expected {sorted(POLICY_FIELDS)}")
        previous = self._exit_state()
        try:
            yield self._apply_exit_changes(policy, changes)
        finally:
            self._restore_exit_state(previous)

    def _apply_exit_changes(self, policy: Optional[ExitPolicy], changes: Dict[str, Any]) -> ExitPolicy:
        """Put `policy` (None: the pipe's own) with `changes` in force; RETURNS it."""
        fields = {POLICY_FIELDS[name]: value for name, value in changes.items()}
        chosen = dataclasses.replace(policy or self._policy, **fields)
        self.set_policy(chosen)
        return chosen

    def _exit_state(self) -> Any:
        """What `using` restores afterwards: here the policy (a shared encoder
        keeps its per-head temperatures beside it)."""
        return self._policy

    def _restore_exit_state(self, state: Any) -> None:
        self._policy = state
