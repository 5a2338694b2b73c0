"""Temperature scaling for one off-ramp, as numpy arithmetic: NLL, the exact
1-D fit of the temperature, and the expected calibration error.

The mean NLL of ``softmax(b z)`` is convex in the inverse temperature b = 1/T,
with derivative ``mean(E_p[z] - z_gold)`` (p = softmax(b z)), monotone in b, so
the minimizer is found by bisection on that derivative inside
[MIN_TEMPERATURE, MAX_TEMPERATURE]: deterministic, no learning rate, exact to
float64 precision. `calibrate.py` decides per layer whether a fit is kept.
"""
import math
from typing import Tuple

import numpy

MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 1e2
DEFAULT_BINS = 15
_BISECTION_TOLERANCE = 1e-10  # in log(1 / T)


def check_inputs(logits: numpy.ndarray, gold: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Validate and convert to float64 logits ``[N, C]`` and int64 gold ``[N]``.

    logits (numpy.ndarray): ``[N, C]`` off-ramp logits.
    gold (numpy.ndarray): ``[N]`` gold class ids in ``[0, C)``.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray]): the checked arrays.
    """
    logits = numpy.asarray(logits, dtype="float64")
    gold = numpy.asarray(gold)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [n_tokens, n_classes]; got shape {logits.shape}")
    if gold.ndim != 1 or gold.shape[0] != logits.shape[0]:
        raise ValueError(f"gold must be [n_tokens] = [{logits.shape[0]}]; got shape {gold.shape}")
    if gold.size and not numpy.issubdtype(gold.dtype, numpy.integer):
        raise ValueError(f"gold must hold integer class ids; got dtype {gold.dtype}")
    gold = gold.astype("int64")
    if gold.size and (gold.min() < 0 or gold.max() >= logits.shape[1]):
        raise ValueError(f"gold class ids must be in [0, {logits.shape[1]}); got [{gold.min()}, {gold.max()}]")
    if not numpy.isfinite(logits).all():
        raise ValueError("logits must be finite")
    return logits, gold


def _check_temperature(temperature: float) -> float:
    """temperature (float): must be positive and finite. RETURNS (float): it."""
    if isinstance(temperature, bool) or not (float(temperature) > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    return float(temperature)


def _log_softmax(scaled: numpy.ndarray) -> numpy.ndarray:
    """scaled (numpy.ndarray): ``[N, C]``. RETURNS (numpy.ndarray): row-wise log-softmax."""
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - numpy.log(numpy.exp(shifted).sum(axis=-1, keepdims=True))


def negative_log_likelihood(logits: numpy.ndarray, gold: numpy.ndarray, temperature: float = 1.0) -> float:
    """Mean token NLL of ``softmax(logits / temperature)``.

    logits (numpy.ndarray): ``[N, C]``.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    temperature (float): T > 0.
    RETURNS (float): the mean NLL in nats; 0.0 when N == 0.
    """
    logits, gold = check_inputs(logits, gold)
    temperature = _check_temperature(temperature)
    if gold.size == 0:
        return 0.0
    log_p = _log_softmax(logits / temperature)
    return float(-log_p[numpy.arange(gold.size), gold].mean())


def _nll_slope(logits: numpy.ndarray, gold_logit: numpy.ndarray, inverse: float) -> float:
    """d NLL / d b at inverse temperature b: ``mean(E_p[z] - z_gold)``, p = softmax(b z).

    logits (numpy.ndarray): ``[N, C]`` float64.
    gold_logit (numpy.ndarray): ``[N]``, each token's gold logit.
    inverse (float): b = 1 / T.
    RETURNS (float): the slope (non-decreasing in b: the NLL is convex in b).
    """
    probs = numpy.exp(_log_softmax(logits * inverse))
    return float(((probs * logits).sum(axis=-1) - gold_logit).mean())


def fit_temperature(logits: numpy.ndarray, gold: numpy.ndarray) -> float:
    """The temperature T > 0 that minimizes the mean NLL of ``softmax(logits / T)``.

    Deterministic. The answer is clipped to [MIN_TEMPERATURE, MAX_TEMPERATURE]
    (separable data has its optimum at T -> 0, pure noise at T -> inf), and is
    never worse than T = 1 on the data it was fitted on.

    logits (numpy.ndarray): ``[N, C]`` uncalibrated off-ramp logits.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    RETURNS (float): the fitted temperature; 1.0 when N == 0 or when the
        temperature cannot change the NLL (every row's logits are equal).
    """
    logits, gold = check_inputs(logits, gold)
    if gold.size == 0 or logits.shape[1] < 2:
        return 1.0
    logits = logits - logits.mean(axis=-1, keepdims=True)  # softmax-invariant; better conditioned
    if not numpy.abs(logits).max() > 0:
        return 1.0
    gold_logit = logits[numpy.arange(gold.size), gold]
    low, high = math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)  # log b
    if _nll_slope(logits, gold_logit, math.exp(low)) >= 0.0:
        best = MAX_TEMPERATURE
    elif _nll_slope(logits, gold_logit, math.exp(high)) <= 0.0:
        best = MIN_TEMPERATURE
    else:
        while high - low > _BISECTION_TOLERANCE:
            middle = 0.5 * (low + high)
            if _nll_slope(logits, gold_logit, math.exp(middle)) < 0.0:
                low = middle
            else:
                high = middle
        best = 1.0 / math.exp(0.5 * (low + high))
    if negative_log_likelihood(logits, gold, best) > negative_log_likelihood(logits, gold, 1.0):
        return 1.0
    return float(best)


def expected_calibration_error(
    logits: numpy.ndarray,
    gold: numpy.ndarray,
    temperature: float = 1.0,
    n_bins: int = DEFAULT_BINS,
) -> float:
    """Expected calibration error of the max-probability confidence.

    Tokens are put in ``n_bins`` equal-width confidence bins, ``(i/n, (i+1)/n]``;
    ECE = sum over bins of (bin share of tokens) x |accuracy - mean confidence|.

    logits (numpy.ndarray): ``[N, C]``.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    temperature (float): T > 0; confidences come from ``softmax(logits / T)``.
    n_bins (int): number of equal-width bins over [0, 1], >= 1.
    RETURNS (float): the ECE in [0, 1]; 0.0 when N == 0.
    """
    logits, gold = check_inputs(logits, gold)
    temperature = _check_temperature(temperature)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, numpy.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    if gold.size == 0:
        return 0.0
    probs = numpy.exp(_log_softmax(logits / temperature))
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == gold).astype("float64")
    bins = numpy.clip(numpy.ceil(confidence * n_bins).astype("int64") - 1, 0, n_bins - 1)
    counts = numpy.bincount(bins, minlength=n_bins)
    gaps = numpy.bincount(bins, weights=correct, minlength=n_bins) - numpy.bincount(
        bins, weights=confidence, minlength=n_bins
    )
    return float(numpy.abs(gaps)[counts > 0].sum() / gold.size)
