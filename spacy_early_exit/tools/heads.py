"""The heads of a shared encoder, as the post-training tools score them.

On a pipeline with a `tokee_transformer`, one exit setting serves every head
listening to it, so a setting is judged by all of them: each head by its own
main metric, and the setting by the worst head's loss against that head's own
full-depth score (``min over heads of score_h - full_h``). Maximizing that
never buys one head's speed with another head's accuracy, and it compares
heads on different scales (entity F1, tag accuracy) by what each loses.

A pipeline of standalone components has no shared heads: every function here
says so with None, and the tools keep their single-metric behaviour.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.training import Example

from ..pipes.head import TaskHead
from ..pipes.owner import EncoderOwner

# Per head: {metric: value}. One metric per head, kept as a mapping so a
# report row says which metric each head was scored by.
HeadValues = Dict[str, Dict[str, Optional[float]]]


def owner_heads(nlp: Language, owner: Any) -> List[Tuple[str, TaskHead]]:
    """The task components a shared `tokee_transformer` serves, in its head order.

    nlp (Language): the pipeline.
    owner (Any): the transformer.
    RETURNS (List[Tuple[str, TaskHead]]): (name, component); fails when it has none.
    """
    names = [name for name in owner.head_names if name in nlp.pipe_names]
    if not names:
        raise ValueError(f"'{owner.name}' has no initialized heads in the pipeline {nlp.pipe_names}")
    return [(name, nlp.get_pipe(name)) for name in names]  # type: ignore[misc]


def shared_heads(nlp: Language) -> Optional[List[Tuple[str, TaskHead]]]:
    """The task components listening to the pipeline's first early-exit
    encoder, when that is a shared `tokee_transformer`; None otherwise.

    nlp (Language): the pipeline.
    RETURNS (Optional[List[Tuple[str, TaskHead]]]): (name, component) in the encoder's head order.
    """
    owners = [pipe for _, pipe in nlp.pipeline if isinstance(pipe, EncoderOwner)]
    if not owners or isinstance(owners[0], TaskHead):
        return None
    return owner_heads(nlp, owners[0])


def head_main_metric(nlp: Language, name: str, pipe: Any) -> str:
    """A task component's main score key: the highest default score weight
    among the keys its scorer really reports (a tagger with attribute "pos"
    declares weights for tag_acc and pos_acc but reports one).

    nlp (Language): the pipeline.
    name (str): the component's name.
    pipe (Any): the component.
    RETURNS (str): e.g. "ents_f" for `tokee_ner`.
    """
    reported = set(pipe.score([]))
    defaults = nlp.get_pipe_meta(name).default_score_weights
    weights = {k: w for k, w in defaults.items() if w is not None and k in reported}
    if not weights:
        raise ValueError(f"Component '{name}' declares no score weights; pass a metric explicitly")
    return max(weights, key=lambda key: weights[key])


def head_metrics(nlp: Language, metric: Optional[str] = None) -> Optional[Dict[str, str]]:
    """Each shared head's metric; None for a pipeline of standalone components.

    nlp (Language): the pipeline.
    metric (Optional[str]): None = each head's main metric; ``"HEAD=METRIC,..."``
        names some heads' metrics; a plain key is used by every head whose
        scorer reports it (the others keep their main metric), so the first
        head's metric, which the commands pass by default, means no change.
    RETURNS (Optional[Dict[str, str]]): head name -> metric, in head order.
    """
    heads = shared_heads(nlp)
    if heads is None:
        return None
    named: Dict[str, str] = {}
    if metric and "=" in metric:
        for pair in metric.split(","):
            head, _, key = pair.partition("=")
            named[head.strip()] = key.strip()
        unknown = sorted(set(named) - {name for name, _ in heads})
        if unknown:
            raise ValueError(f"--metric names {unknown}, which are not heads of the shared encoder {[n for n, _ in heads]}")
    out = {}
    for name, pipe in heads:
        if name in named:
            out[name] = named[name]
        elif metric and "=" not in metric and metric in pipe.score([]):
            out[name] = metric
        else:
            out[name] = head_main_metric(nlp, name, pipe)
    return out


def score_heads(nlp: Language, scored: Sequence[Example], metrics: Mapping[str, str]) -> HeadValues:
    """Each head's metric on annotated examples, from its own scorer (0-1).

    Scored head by head: spaCy's merged scores would let two heads that
    report the same key (two NER heads) overwrite each other.

    nlp (Language): the pipeline that annotated `scored`.
    scored (Sequence[Example]): predicted docs with their gold.
    metrics (Mapping[str, str]): head name -> metric.
    RETURNS (HeadValues): {head: {metric: value or None}}.
    """
    out: HeadValues = {}
    for name, key in metrics.items():
        scores = nlp.get_pipe(name).score(list(scored))
        if key not in scores:
            raise ValueError(f"Metric {key!r} not in the scores of '{name}': {sorted(scores)}")
        value = scores[key]
        out[name] = {key: float(value) if value is not None else None}
    return out


def head_value(values: HeadValues, head: str) -> Optional[float]:
    """The one metric value of `head` in `values`."""
    return next(iter(values[head].values()))


@dataclass(frozen=True)
class HeadScoring:
    """How a shared pipeline's settings are judged.

    metrics (Dict[str, str]): head name -> its metric.
    full (Optional[HeadValues]): each head's full-depth score (0-1); None
        until full depth is measured, and then no objective is known.
    """

    metrics: Dict[str, str]
    full: Optional[HeadValues] = None

    def objective(self, values: HeadValues) -> Tuple[Optional[float], Optional[str]]:
        """The worst head's loss against its own full depth, and that head.

        values (HeadValues): a setting's per-head scores.
        RETURNS (Tuple[Optional[float], Optional[str]]): ``min_h (score_h - full_h)``
            (0-1 scale) and its head; (None, None) without a full-depth
            reference or when a head has no score (it ranks below every real one).
        """
        if self.full is None:
            return None, None
        deltas = []
        for head in self.metrics:
            value, full = head_value(values, head), head_value(self.full, head)
            if value is None or full is None:
                return None, None
            deltas.append((value - full, head))
        # Ties go to the earlier head, so the reported worst head is stable.
        worst = min(deltas, key=lambda pair: pair[0])
        return worst


def rounded_scores(values: HeadValues) -> Dict[str, Dict[str, Optional[float]]]:
    """Per-head scores as report rows give them: 0-100, two decimals."""
    return {
        head: {key: round(100.0 * value, 2) if value is not None else None for key, value in metric.items()}
        for head, metric in values.items()
    }


__all__ = [
    "HeadScoring", "HeadValues", "head_main_metric", "head_metrics", "head_value", "owner_heads", "rounded_scores",
    "score_heads", "shared_heads",
]
