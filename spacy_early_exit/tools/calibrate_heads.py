"""Calibration of a shared encoder: temperatures per head and per layer.

Each head listening to a `tokee_transformer` reads its own columns of the
fused off-ramps, and the joint exit rule scales each head's logits by that
head's temperature before it takes the max over heads. So each head is
calibrated on its own: its full-depth off-ramp logits on dev against its own
gold, with the same held-out keep-or-T=1 rule as a standalone component
(`calibrate.calibrate_layers`). The result is the transformer's
``temperatures = {head: [T_1..T_L]}``.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spacy.training import Example

from ..pipes.head import TaskHead
from .calibrate import calibrate_layers, doc_folds
from .temperature import DEFAULT_BINS


def starting_temperatures(transformer: Any, names: Sequence[str]) -> Dict[str, List[float]]:
    """The per-head temperatures the heads not calibrated now keep.

    A per-head value stays as it is; one list for every head becomes each
    head's own list, so that calibrating one head leaves the others' exits
    where they were.

    transformer (Any): the `tokee_transformer`.
    names (Sequence[str]): every head of the transformer.
    RETURNS (Dict[str, List[float]]): head -> temperatures, for the heads that have any.
    """
    current = transformer.temperatures
    if current is None:
        return {}
    if isinstance(current, dict):
        return {name: list(values) for name, values in current.items()}
    return {name: list(current) for name in names}


def calibrate_shared(
    transformer: Any,
    heads: Sequence[Tuple[str, TaskHead]],
    examples: Sequence[Example],
    n_bins: int = DEFAULT_BINS,
    dev_name: str = "the dev data",
) -> Dict[str, Any]:
    """Calibrate the given heads of a shared encoder and set the result on it.

    transformer (Any): the `tokee_transformer` (its precision is the one fitted for).
    heads (Sequence[Tuple[str, TaskHead]]): (name, listening component) to calibrate.
    examples (Sequence[Example]): dev examples with gold for the heads.
    n_bins (int): ECE bins.
    dev_name (str): the dev data's name, for messages.
    RETURNS (Dict[str, Any]): ``heads`` (per head, the `calibrate_layers`
        report), ``temperatures`` (what the transformer has now, per head)
        and ``previous_temperatures`` (what it had before).
    """
    previous = transformer.temperatures
    temperatures = starting_temperatures(transformer, transformer.head_names)
    reports: Dict[str, Dict[str, Any]] = {}
    for name, head in heads:
        logits, gold, folds = doc_folds(head, examples)
        if gold.size == 0:
            raise ValueError(f"Component '{name}': {dev_name} has no gold-labeled tokens to calibrate on")
        reports[name] = calibrate_layers(logits, gold, n_bins, folds)
        temperatures[name] = list(reports[name]["temperatures"])
    transformer.temperatures = temperatures
    return {"heads": reports, "temperatures": transformer.temperatures, "previous_temperatures": previous}


def chosen_heads(
    owner_name: str, heads: List[Tuple[str, TaskHead]], component: Optional[str]
) -> List[Tuple[str, TaskHead]]:
    """The heads `--component` asks for: all of them for the transformer's
    name or None, else the one head of that name (none when it is not one).

    owner_name (str): the transformer's name.
    heads (List[Tuple[str, TaskHead]]): its listening components.
    component (Optional[str]): what the user named.
    RETURNS (List[Tuple[str, TaskHead]]): the heads to calibrate.
    """
    if component is None or component == owner_name:
        return heads
    return [(name, head) for name, head in heads if name == component]


def format_heads(name: str, component: Dict[str, Any], table: Any) -> List[str]:
    """The per-head tables of a shared encoder's calibration report.

    name (str): the transformer's name.
    component (Dict[str, Any]): its `calibrate_shared` report.
    table (Any): formats one `calibrate_layers` report under a title.
    RETURNS (List[str]): one table per head.
    """
    return [table(f"{name}/{head}", report) for head, report in component["heads"].items()]
