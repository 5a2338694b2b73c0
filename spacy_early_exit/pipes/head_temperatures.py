"""Per-head temperatures of a shared encoder, kept by head name.

`tokee_transformer`'s `temperatures` is ``{head_name: [T_1..T_L]}`` (each
head calibrated on its own off-ramp columns), one per-layer list for every
head, or None. The names are kept as given: the component is made, and its
config read, before the heads add their off-ramps at initialize, and the
encoder below (layer 1) knows heads only by position. `policy` therefore
turns the names into the encoder's head order each time it is read.
"""
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..encoder.exits import ExitPolicy, validate_per_layer
from .exit_fields import ExitSettings

PerHead = Dict[str, Tuple[float, ...]]
_MISSING = object()


def split_temperatures(value: Any) -> Tuple[Optional[Sequence[float]], PerHead]:
    """A `temperatures` value as (one list for every head, per-head lists by name).

    value (Any): None, a per-layer list, or ``{head_name: per-layer list}``.
    """
    if value is None or not isinstance(value, Mapping):
        return value, {}
    per_head: PerHead = {}
    for name, values in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"'temperatures' per head must be keyed by component name; got {name!r}")
        per_head[name] = validate_per_layer(values, "temperatures")
    return None, per_head


class HeadTemperatures(ExitSettings):
    """Mixin for the shared encoder: `temperatures` by head name on top of
    the exit settings. The class provides `head_names` (the heads in the
    encoder's order) and `encoder_depth`, and sets `_head_temperatures`."""

    _head_temperatures: PerHead

    @property
    def head_names(self) -> List[str]:
        raise NotImplementedError

    @property
    def temperatures(self) -> Any:  # type: ignore[override]
        """``{head: [T_1..T_L]}``, one list for every head, or None."""
        if self._head_temperatures:
            return {name: list(values) for name, values in self._head_temperatures.items()}
        values = self._policy.temperatures
        return list(values) if values is not None else None

    @temperatures.setter
    def temperatures(self, value: Any) -> None:
        flat, per_head = split_temperatures(value)
        self._check_per_head(per_head)
        # Not through set_policy, which keeps the per-head values it is not given.
        ExitSettings.set_policy(self, dataclasses.replace(self._policy, temperatures=flat, head_temperatures=None))
        self._head_temperatures = per_head

    @property
    def policy(self) -> ExitPolicy:
        """The exit settings, per-head temperatures in the encoder's head order."""
        names = self.head_names
        if not self._head_temperatures or not names:
            return self._policy
        per_head = tuple(self._head_temperatures.get(name) for name in names)
        return dataclasses.replace(self._policy, head_temperatures=per_head)

    def set_policy(self, policy: ExitPolicy) -> None:
        """Replace the exit settings. Per-head temperatures in `policy` (in
        head order) replace those of the heads it covers; a policy without
        them leaves the per-head values as they are (change them through
        `temperatures`)."""
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"Expected an ExitPolicy; got {type(policy).__name__}")
        per_head = dict(self._head_temperatures)
        if policy.head_temperatures is not None:
            names = self.head_names
            if len(policy.head_temperatures) != len(names):
                raise ValueError(
                    f"per-head 'temperatures' has {len(policy.head_temperatures)} entries for "
                    f"{len(names)} heads {names}"
                )
            for name, values in zip(names, policy.head_temperatures):
                if values is None:
                    per_head.pop(name, None)
                else:
                    per_head[name] = values
            policy = dataclasses.replace(policy, head_temperatures=None)
        self._check_per_head(per_head)
        super().set_policy(policy)
        self._head_temperatures = per_head

    def check_temperature_names(self) -> None:
        """Fail when `temperatures` names a component that is not a head."""
        unknown = sorted(set(self._head_temperatures) - set(self.head_names))
        if unknown:
            raise ValueError(
                f"'temperatures' of '{getattr(self, 'name', '?')}' names {unknown}, which are not its heads "
                f"{self.head_names}"
            )

    def _check_per_head(self, per_head: PerHead) -> None:
        depth = self.encoder_depth
        if depth is not None and per_head:
            ExitPolicy(head_temperatures=tuple(per_head.values())).check_depth(depth)

    def _apply_exit_changes(self, policy: Optional[ExitPolicy], changes: Dict[str, Any]) -> ExitPolicy:
        changes = dict(changes)
        temperatures = changes.pop("temperatures", _MISSING)
        super()._apply_exit_changes(policy, changes)
        if temperatures is not _MISSING:
            self.temperatures = temperatures
        return self.policy

    def _exit_state(self) -> Any:
        return self._policy, dict(self._head_temperatures)

    def _restore_exit_state(self, state: Any) -> None:
        self._policy, self._head_temperatures = state
