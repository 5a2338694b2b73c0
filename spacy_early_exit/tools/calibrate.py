"""Per-layer temperature calibration of the off-ramps (Schwartz et al., ACL 2020).

Each off-ramp l gets one scalar temperature T_l, fitted on dev data with every
token running to full depth, by minimizing the token-level negative
log-likelihood of ``softmax(logits / T_l)``. With calibrated temperatures one
exit threshold means the same confidence at every layer.

The fit itself (an exact 1-D convex problem) is in `temperature.py`.

A fitted temperature always lowers the NLL of the tokens it was fitted on, so
that alone says nothing about whether it helps. Each layer's fit is checked by
two-fold cross-validation over dev documents (fit on one half, score the other,
then swap): the layer keeps its fitted temperature only when it lowers the
held-out NLL and does not raise the held-out ECE; otherwise it keeps T = 1.
Kept layers are then refitted on all dev tokens.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy

from .temperature import (  # noqa: F401  (re-exported: the calibration API)
    DEFAULT_BINS,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    check_inputs,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


# A held-out NLL must fall by more than this (nats) for a fit to count as a
# gain: float noise must not decide the check.
_NLL_TOLERANCE = 1e-9


def _rounded(temperature: float) -> float:
    """A temperature as it is reported and written to configs: 6 significant digits."""
    return float(f"{temperature:.6g}")


def _check_folds(folds: Optional[numpy.ndarray], n_tokens: int) -> numpy.ndarray:
    """Fold ids 0/1 per token; None = alternate tokens (fine for i.i.d. tokens;
    `calibrate_pipeline` passes folds by document, since tokens of a document
    are not independent).

    folds (Optional[numpy.ndarray]): ``[N]`` fold ids, 0 or 1.
    n_tokens (int): N.
    RETURNS (numpy.ndarray): int64 ``[N]``.
    """
    if folds is None:
        return numpy.arange(n_tokens, dtype="int64") % 2
    folds = numpy.asarray(folds)
    if folds.shape != (n_tokens,):
        raise ValueError(f"folds must be [n_tokens] = [{n_tokens}]; got shape {folds.shape}")
    if folds.size and not set(numpy.unique(folds).tolist()) <= {0, 1}:
        raise ValueError("folds must hold fold ids 0 and 1")
    return folds.astype("int64")


def held_out_check(
    logits: numpy.ndarray, gold: numpy.ndarray, folds: numpy.ndarray, n_bins: int = DEFAULT_BINS
) -> Dict[str, Any]:
    """Two-fold cross-validation of one layer's temperature fit.

    Each fold's tokens are scored with the temperature fitted on the other
    fold, and the NLL and ECE of all tokens so scored are compared with T = 1.

    logits (numpy.ndarray): ``[N, C]`` one layer's logits.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    folds (numpy.ndarray): ``[N]`` fold ids 0/1.
    n_bins (int): ECE bins.
    RETURNS (Dict[str, Any]): ``heldout_nll_before/after``,
        ``heldout_ece_before/after`` (None when a fold is empty), ``kept`` and
        ``reason`` (why T = 1 stays, or "held-out NLL and ECE improved").
    """
    logits, gold = check_inputs(logits, gold)
    sizes = [int((folds == fold).sum()) for fold in (0, 1)]
    if min(sizes) == 0:
        return {"heldout_nll_before": None, "heldout_nll_after": None, "heldout_ece_before": None,
                "heldout_ece_after": None, "kept": False, "reason": "too little dev data to check the fit on held-out tokens"}
    # Each token's held-out temperature: the one fitted on the other fold.
    held_out = numpy.empty(gold.size, dtype="float64")
    for fold in (0, 1):
        other = folds != fold
        held_out[folds == fold] = _rounded(fit_temperature(logits[other], gold[other]))
    scaled = logits / held_out[:, None]
    row = {
        "heldout_nll_before": negative_log_likelihood(logits, gold, 1.0),
        "heldout_nll_after": negative_log_likelihood(scaled, gold, 1.0),
        "heldout_ece_before": expected_calibration_error(logits, gold, 1.0, n_bins),
        "heldout_ece_after": expected_calibration_error(scaled, gold, 1.0, n_bins),
    }
    # NLL is what the fit optimizes, so a held-out gain is the honest test. ECE
    # is required not to rise as well: the exit threshold reads the max-prob
    # confidence, which ECE measures, and a temperature that buys NLL by making
    # confidences less reliable would move the exits the wrong way. Both on
    # held-out tokens, so a fit that only matches its own sample is refused.
    if not row["heldout_nll_after"] < row["heldout_nll_before"] - _NLL_TOLERANCE:
        row.update(kept=False, reason="held-out NLL not improved")
    elif row["heldout_ece_after"] > row["heldout_ece_before"]:
        row.update(kept=False, reason="held-out ECE worse")
    else:
        row.update(kept=True, reason="held-out NLL and ECE improved")
    return row


def calibrate_layer(
    logits: numpy.ndarray, gold: numpy.ndarray, folds: numpy.ndarray, n_bins: int = DEFAULT_BINS
) -> Dict[str, Any]:
    """One layer's temperature: fitted on all tokens if the held-out check keeps it, else 1.

    logits (numpy.ndarray): ``[N, C]``.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    folds (numpy.ndarray): ``[N]`` fold ids 0/1 for the held-out check.
    n_bins (int): ECE bins.
    RETURNS (Dict[str, Any]): ``temperature`` (the one used), ``fitted_temperature``
        (the all-dev fit, kept or not), ``kept``, ``reason``, NLL and ECE on all
        tokens before and after, and the held-out figures.
    """
    check = held_out_check(logits, gold, folds, n_bins)
    fitted = _rounded(fit_temperature(logits, gold))
    ece_before = expected_calibration_error(logits, gold, 1.0, n_bins)
    kept = check["kept"]
    if kept and expected_calibration_error(logits, gold, fitted, n_bins) > ece_before:
        # The refit on all dev can land elsewhere than the fold fits; the
        # report shows dev ECE, so a temperature that raises it is not kept.
        kept, check["reason"] = False, "dev ECE worse after the refit on all dev"
    temperature = fitted if kept else 1.0
    return {
        "temperature": temperature,
        "fitted_temperature": fitted,
        "kept": kept,
        "reason": check["reason"],
        "nll_before": negative_log_likelihood(logits, gold, 1.0),
        "nll_after": negative_log_likelihood(logits, gold, temperature),
        "ece_before": ece_before,
        "ece_after": expected_calibration_error(logits, gold, temperature, n_bins),
        **{key: value for key, value in check.items() if key.startswith("heldout_")},
    }


def calibrate_layers(
    layer_logits: numpy.ndarray,
    gold: numpy.ndarray,
    n_bins: int = DEFAULT_BINS,
    folds: Optional[numpy.ndarray] = None,
) -> Dict[str, Any]:
    """Fit one temperature per layer, keep it only where it helps on held-out
    tokens, and measure NLL and ECE before (T = 1) and after.

    layer_logits (numpy.ndarray): ``[L, N, C]`` full-depth logits of every off-ramp.
    gold (numpy.ndarray): ``[N]`` gold class ids.
    n_bins (int): ECE bins.
    folds (Optional[numpy.ndarray]): ``[N]`` fold id (0/1) of each token for
        the held-out check; None = alternate tokens.
    RETURNS (Dict[str, Any]): ``temperatures`` (one per layer, 6 significant
        digits; 1.0 where the fit was not kept), ``kept`` (one bool per layer),
        ``n_tokens``, ``n_classes`` and ``layers``: one dict per layer with
        ``layer`` (1-based) and the `calibrate_layer` fields.
    """
    layer_logits = numpy.asarray(layer_logits)
    if layer_logits.ndim != 3:
        raise ValueError(f"layer_logits must be [n_layers, n_tokens, n_classes]; got shape {layer_logits.shape}")
    folds = _check_folds(folds, layer_logits.shape[1])
    layers: List[Dict[str, Any]] = [
        {"layer": index + 1, **calibrate_layer(logits, gold, folds, n_bins)} for index, logits in enumerate(layer_logits)
    ]
    return {
        "n_tokens": int(layer_logits.shape[1]),
        "n_classes": int(layer_logits.shape[2]),
        "temperatures": [row["temperature"] for row in layers],
        "kept": [row["kept"] for row in layers],
        "layers": layers,
    }


def doc_folds(pipe: Any, examples: Sequence[Any], precision: Optional[str] = None) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Full-depth logits of the dev tokens, with each token's fold: its
    document's position, even or odd. Tokens of one document share context,
    so the held-out check splits by document, not by token.

    pipe (EarlyExitPipe): the component.
    examples (Sequence[Example]): dev examples.
    precision (Optional[str]): the layer stack's precision; None = the pipe's.
    RETURNS (Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]): logits
        ``[L, N, C]``, gold ``[N]`` and folds ``[N]``.
    """
    parts = [pipe.layer_logits(examples[fold::2], precision=precision) for fold in (0, 1)]
    logits = numpy.concatenate([part[0] for part in parts], axis=1)
    gold = numpy.concatenate([part[1] for part in parts])
    folds = numpy.concatenate([numpy.full(part[1].size, fold, dtype="int64") for fold, part in enumerate(parts)])
    return logits, gold, folds


def calibrate_pipeline(
    pipeline_dir: Union[str, Path],
    dev_path: Union[str, Path],
    output_dir: Union[str, Path],
    component: Optional[str] = None,
    limit: int = 0,
    n_bins: int = DEFAULT_BINS,
    precision: Optional[str] = None,
) -> Dict[str, Any]:
    """Calibrate a saved pipeline's early-exit components and save the result.

    Every early-exit component is calibrated (or only `component`): its
    full-depth per-layer logits on the dev docs are fitted, a layer whose fit
    does not help on held-out dev documents keeps T = 1 (see `calibrate_layer`),
    the temperatures are set on the pipe, the pipeline is saved to `output_dir`, and the temperatures
    are written into the saved ``config.cfg`` so ``spacy.load(output_dir)``
    uses them. A shared `tokee_transformer` is calibrated head by head, each
    head on its own off-ramp columns and gold (`calibrate_heads`), into its
    per-head ``temperatures``.

    pipeline_dir (Union[str, Path]): the trained pipeline folder.
    dev_path (Union[str, Path]): a .spacy DocBin with gold annotation (never test).
    output_dir (Union[str, Path]): where the calibrated pipeline is written.
    component (Optional[str]): the one component to calibrate (a standalone
        component, a shared transformer: all its heads, or one listening
        head); None = all.
    limit (int): use the first `limit` dev docs only (0: all).
    n_bins (int): ECE bins.
    precision (Optional[str]): fit the temperatures for this prediction
        precision ("fp32", "bf16", "int8", "int8-ort", "fp32-ort"), which the saved config then sets;
        None = each component's own.
    RETURNS (Dict[str, Any]): ``pipeline``, ``dev_data``, ``output``, ``n_docs``
        and ``components``: per component name, the `calibrate_layers` report
        plus ``previous_temperatures`` (what the pipe had before); for a
        shared transformer, `calibrate_heads.calibrate_shared`'s report
        (``heads``: per head the `calibrate_layers` report; ``temperatures``
        per head; ``previous_temperatures``).
    """
    import spacy

    from ..pipes.head import TaskHead
    from .calibrate_heads import calibrate_shared, chosen_heads
    from .config_files import save_tuned_pipeline
    from .data import load_examples
    from .evaluate import early_exit_pipes, task_heads
    from .heads import owner_heads

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an integer >= 0; got {limit!r}")
    dev_path, output_dir = Path(dev_path), Path(output_dir)
    if not dev_path.exists():
        raise ValueError(f"No such dev data file: {dev_path}")
    nlp = spacy.load(pipeline_dir)
    pipes: List[Tuple[str, Any, Optional[List[Any]]]] = []
    for name, owner in early_exit_pipes(nlp):
        if isinstance(owner, TaskHead):
            if component in (None, name):
                pipes.append((name, owner, None))
        else:
            heads = chosen_heads(name, owner_heads(nlp, owner), component)
            if heads:
                pipes.append((name, owner, heads))
    if not pipes:
        names = [name for name, _ in early_exit_pipes(nlp)] + [name for name, _ in task_heads(nlp)]
        raise ValueError(f"No early-exit component named {component!r}; the pipeline has {sorted(set(names))}")
    examples = load_examples(nlp, dev_path, limit)
    reports: Dict[str, Dict[str, Any]] = {}
    overrides: Dict[str, Any] = {}
    for name, pipe, heads in pipes:
        if precision is not None:
            pipe.precision = precision
            overrides[f"components.{name}.precision"] = precision
        if heads is not None:
            reports[name] = calibrate_shared(pipe, heads, examples, n_bins, f"the dev data {dev_path}")
            overrides[f"components.{name}.temperatures"] = reports[name]["temperatures"]
            continue
        logits, gold, folds = doc_folds(pipe, examples)
        if gold.size == 0:
            raise ValueError(f"Component '{name}': the dev data {dev_path} has no gold-labeled tokens to calibrate on")
        report = calibrate_layers(logits, gold, n_bins, folds)
        report["previous_temperatures"] = pipe.temperatures
        pipe.temperatures = report["temperatures"]
        reports[name] = report
        overrides[f"components.{name}.temperatures"] = list(report["temperatures"])
    save_tuned_pipeline(nlp, overrides, output_dir)
    return {
        "pipeline": str(pipeline_dir),
        "dev_data": str(dev_path),
        "output": str(output_dir),
        "n_docs": len(examples),
        "precision": precision,
        "components": reports,
    }


def layer_table(title: str, component: Dict[str, Any]) -> str:
    """One `calibrate_layers` report as a Markdown table under `title`."""
    lines = [
        f"{title}: {component['n_tokens']} tokens, {component['n_classes']} classes",
        "| layer | T | NLL before | NLL after | ECE before | ECE after | fit kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in component["layers"]:
        # Reports written before the held-out check have no "kept": every fit was used.
        kept = row.get("kept", True)
        verdict = "yes" if kept else f"no (fitted T {row.get('fitted_temperature', 1.0):.4g}: {row.get('reason', '')})"
        lines.append(
            f"| {row['layer']} | {row['temperature']:.4g} | {row['nll_before']:.4f} | {row['nll_after']:.4f} "
            f"| {row['ece_before']:.4f} | {row['ece_after']:.4f} | {verdict} |"
        )
    return "\n".join(lines)


def format_report(report: Dict[str, Any]) -> str:
    """A Markdown table per component (per head of a shared encoder, titled
    "transformer/head") of a `calibrate_pipeline` report.

    report (Dict[str, Any]): what `calibrate_pipeline` returned.
    RETURNS (str): the tables.
    """
    from .calibrate_heads import format_heads

    blocks = []
    for name, component in report["components"].items():
        blocks.extend(format_heads(name, component, layer_table) if "heads" in component else [layer_table(name, component)])
    return "\n\n".join(blocks)


__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "calibrate_layer",
    "calibrate_layers",
    "calibrate_pipeline",
    "doc_folds",
    "expected_calibration_error",
    "fit_temperature",
    "format_report",
    "held_out_check",
    "negative_log_likelihood",
]
