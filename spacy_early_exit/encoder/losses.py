"""The off-ramp losses as pure functions of logits and targets, with their gradients.

All take every layer's logits ``[layers, words, classes]`` for the scored
words and return ``(loss, d_logits)``. Layer l is weighted by l / sum(l)
(Li et al., 2021): the deep ramps, which decide the hard tokens, count most.

- `weighted_cross_entropy`: the paper's stage-1 loss.
- `flooding`: stage 2's ``|CE - CE_stage1|`` per token and layer (the
  reference code's loss): each token's loss is pushed towards what the
  stage-1 model reached, from either side.
- `self_distillation`: each off-ramp below the last also learns the
  teacher's softened distribution, ``T^2 * KL(softmax(t/T) || softmax(z/T))``
  (Hinton et al.'s scaling keeps the gradient size independent of T). The
  teacher is the last layer: the model's own (stage 1, detached), or the
  frozen stage-1 model's (stage 2).
"""
from typing import Optional, Tuple

import numpy

Loss = Tuple[float, numpy.ndarray]


def layer_weights(n_layers: int) -> numpy.ndarray:
    """``[layers]`` weights l / sum(l), l = 1..n_layers."""
    weights = numpy.arange(1, n_layers + 1, dtype="float32")
    return weights / weights.sum()


def log_softmax(logits: numpy.ndarray) -> numpy.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - numpy.log(numpy.exp(shifted).sum(axis=-1, keepdims=True))


def _gold_log_probs(log_probs: numpy.ndarray, gold: numpy.ndarray) -> numpy.ndarray:
    """``[layers, words]`` log-probability of each word's gold class."""
    n_layers = log_probs.shape[0]
    return numpy.take_along_axis(log_probs, gold[None, :, None].repeat(n_layers, 0), axis=-1)[..., 0]


def weighted_cross_entropy(logits: numpy.ndarray, gold: numpy.ndarray) -> Loss:
    """sum_l w_l * mean_words CE_l.

    logits (numpy.ndarray): ``[layers, words, classes]``.
    gold (numpy.ndarray): ``[words]`` class ids.
    """
    n_layers, n_words = logits.shape[:2]
    log_probs = log_softmax(logits)
    scale = layer_weights(n_layers)[:, None] / float(n_words)
    loss = float(-(scale * _gold_log_probs(log_probs, gold)).sum())
    grad = numpy.exp(log_probs)
    grad[:, numpy.arange(n_words), gold] -= 1.0
    return loss, (grad * scale[..., None]).astype(logits.dtype)


def flooding(logits: numpy.ndarray, gold: numpy.ndarray, reference: numpy.ndarray) -> Loss:
    """sum_l w_l * mean_words |CE_l - CE_ref_l|, the reference model's CE as the floor.

    reference (numpy.ndarray): the frozen stage-1 model's logits, same shape as `logits`.
    """
    n_layers, n_words = logits.shape[:2]
    log_probs = log_softmax(logits)
    ce = -_gold_log_probs(log_probs, gold)
    ref_ce = -_gold_log_probs(log_softmax(reference), gold)
    gap = ce - ref_ce
    scale = layer_weights(n_layers)[:, None] / float(n_words)
    loss = float((scale * numpy.abs(gap)).sum())
    grad = numpy.exp(log_probs)
    grad[:, numpy.arange(n_words), gold] -= 1.0
    return loss, (grad * (scale * numpy.sign(gap))[..., None]).astype(logits.dtype)


def self_distillation(logits: numpy.ndarray, teacher: numpy.ndarray, temperature: float) -> Loss:
    """sum_{l<L} w_l * mean_words T^2 KL(softmax(teacher/T) || softmax(z_l/T)).

    The last layer is the teacher's own level and gets no distillation term;
    no gradient flows into the teacher.

    logits (numpy.ndarray): ``[layers, words, classes]``.
    teacher (numpy.ndarray): ``[words, classes]``, the teacher's logits.
    temperature (float): T > 0; higher spreads the teacher's mass over more classes.
    """
    n_layers, n_words = logits.shape[:2]
    d_logits = numpy.zeros_like(logits)
    if n_layers < 2 or n_words == 0:
        return 0.0, d_logits
    t = float(temperature)
    target_log = log_softmax(teacher / t)[None]
    target = numpy.exp(target_log)
    student_log = log_softmax(logits[:-1] / t)
    kl = (target * (target_log - student_log)).sum(axis=-1)  # [layers-1, words]
    scale = layer_weights(n_layers)[:-1, None] / float(n_words)
    loss = float((scale * kl).sum() * t * t)
    # d/dz of T^2 KL(q || softmax(z/T)) is T * (softmax(z/T) - q).
    d_logits[:-1] = (t * (numpy.exp(student_log) - target) * scale[..., None]).astype(logits.dtype)
    return loss, d_logits


def ramp_loss(
    logits: numpy.ndarray,
    gold: numpy.ndarray,
    kind: str = "ce",
    reference: Optional[numpy.ndarray] = None,
    distill_weight: float = 0.0,
    distill_temperature: float = 2.0,
) -> Loss:
    """The training loss of the off-ramps: CE or flooding, plus optional self-distillation.

    logits (numpy.ndarray): ``[layers, words, classes]`` for the gold-labeled words.
    gold (numpy.ndarray): ``[words]`` class ids.
    kind (str): "ce" or "flooding" (flooding needs `reference`; without it, CE).
    reference (Optional[numpy.ndarray]): the frozen stage-1 model's logits
        (stage 2); its last layer is then the distillation teacher.
    distill_weight (float): weight of the distillation term; 0 = the paper's loss.
    distill_temperature (float): the distillation temperature T.
    RETURNS (Tuple[float, numpy.ndarray]): the loss and d(loss)/d(logits).
    """
    if kind == "flooding" and reference is not None:
        loss, d_logits = flooding(logits, gold, reference)
    else:
        loss, d_logits = weighted_cross_entropy(logits, gold)
    if distill_weight > 0.0:
        teacher = reference[-1] if reference is not None else logits[-1]
        extra, d_extra = self_distillation(logits, teacher, distill_temperature)
        loss += distill_weight * extra
        d_logits = d_logits + distill_weight * d_extra
    return loss, d_logits
