"""The off-ramp losses: values and gradients against finite differences, and what distillation pulls towards."""
import numpy
import pytest

from spacy_early_exit.encoder.losses import (
    flooding,
    layer_weights,
    ramp_loss,
    self_distillation,
    weighted_cross_entropy,
)


def numeric_gradient(function, logits, eps=1e-4):
    grad = numpy.zeros_like(logits, dtype="float64")
    for index in numpy.ndindex(*logits.shape):
        up, down = logits.astype("float64"), logits.astype("float64")
        up[index] += eps
        down[index] -= eps
        grad[index] = (function(up)[0] - function(down)[0]) / (2 * eps)
    return grad


@pytest.fixture
def example():
    rng = numpy.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5))
    gold = numpy.array([0, 2, 4, 1])
    teacher = rng.normal(size=(4, 5)) * 2
    reference = rng.normal(size=(3, 4, 5))
    return logits, gold, teacher, reference


def test_weighted_cross_entropy_value_and_gradient(example):
    logits, gold, _, _ = example
    loss, grad = weighted_cross_entropy(logits, gold)
    log_p = logits - numpy.log(numpy.exp(logits).sum(-1, keepdims=True))
    expected = sum(w * -log_p[l, numpy.arange(4), gold].mean() for l, w in enumerate(layer_weights(3)))
    assert loss == pytest.approx(expected, rel=1e-6)
    assert numpy.allclose(grad, numeric_gradient(lambda z: weighted_cross_entropy(z, gold), logits), atol=1e-6)


def test_flooding_gradient(example):
    logits, gold, _, reference = example
    _, grad = flooding(logits, gold, reference)
    assert numpy.allclose(grad, numeric_gradient(lambda z: flooding(z, gold, reference), logits), atol=1e-6)


def test_distillation_value_gradient_and_sign(example):
    logits, _, teacher, _ = example
    temperature = 2.0
    loss, grad = self_distillation(logits, teacher, temperature)
    # The value by hand: T^2 KL(q || p_l) for the two layers below the last.
    q = numpy.exp(teacher / temperature)
    q /= q.sum(-1, keepdims=True)
    weights = layer_weights(3)
    expected = 0.0
    for layer in range(2):
        p = numpy.exp(logits[layer] / temperature)
        p /= p.sum(-1, keepdims=True)
        expected += weights[layer] * (q * numpy.log(q / p)).sum(-1).mean()
    assert loss == pytest.approx(expected * temperature ** 2, rel=1e-6)
    assert numpy.allclose(grad, numeric_gradient(lambda z: self_distillation(z, teacher, temperature), logits), atol=1e-6)
    assert not grad[-1].any()  # the last layer is the teacher's level
    # A small step against the gradient moves every low ramp towards the teacher.
    stepped = logits - 0.5 * grad
    assert self_distillation(stepped, teacher, temperature)[0] < loss
    # The gradient on the teacher's top class is negative where the student
    # gives it less mass than the teacher: descent raises it.
    top = teacher.argmax(-1)
    p0 = numpy.exp(logits[0] / temperature)
    p0 /= p0.sum(-1, keepdims=True)
    below = p0[numpy.arange(4), top] < q[numpy.arange(4), top]
    assert (grad[0][numpy.arange(4), top][below] < 0).all()
    # A student that already agrees with the teacher has nothing to learn.
    agreeing = numpy.stack([teacher, teacher, teacher])
    zero_loss, zero_grad = self_distillation(agreeing, teacher, temperature)
    assert zero_loss == pytest.approx(0.0, abs=1e-9) and numpy.allclose(zero_grad, 0.0)


def test_ramp_loss_combines_and_picks_the_teacher(example):
    logits, gold, _, reference = example
    plain, plain_grad = ramp_loss(logits, gold)
    assert (plain, plain_grad.tolist()) == (weighted_cross_entropy(logits, gold)[0], weighted_cross_entropy(logits, gold)[1].tolist())
    # Stage 1: the model's own last layer teaches (detached: no gradient there from it).
    own, own_grad = ramp_loss(logits, gold, distill_weight=0.5, distill_temperature=2.0)
    extra, extra_grad = self_distillation(logits, logits[-1], 2.0)
    assert own == pytest.approx(plain + 0.5 * extra)
    assert numpy.allclose(own_grad, plain_grad + 0.5 * extra_grad)
    # Stage 2: the frozen stage-1 model's last layer teaches.
    staged, _ = ramp_loss(logits, gold, "ce", reference, distill_weight=0.5, distill_temperature=2.0)
    assert staged == pytest.approx(plain + 0.5 * self_distillation(logits, reference[-1], 2.0)[0])
    # Flooding without a reference falls back to CE.
    assert ramp_loss(logits, gold, "flooding")[0] == plain
