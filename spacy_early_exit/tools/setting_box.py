"""The exit setting an exit picture shows: read off a loaded pipeline, drawn as one box.

A picture of exit layers means little without the setting that produced it
(mode, thresholds, window, precision, calibration, a tuned JSON applied at load
time), so `visualize` states it above the docs.
"""
import html
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union


def exit_setting(
    nlp: Any,
    component: Optional[str] = None,
    pipeline: Optional[Union[str, Path]] = None,
    config: Optional[Union[str, Path]] = None,
    config_keys: Optional[Iterable[str]] = None,
    run_overrides: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The exit setting a picture shows, read off the loaded pipeline, for `render(setting=...)`.

    nlp (Language): the pipeline the docs went through (with any overrides applied).
    component (Optional[str]): the early-exit component shown; None = the last one.
    pipeline (Optional[Union[str, Path]]): where the pipeline was loaded from.
    config (Optional[Union[str, Path]]): a JSON of config overrides applied at
        load time (e.g. a tuned configs/2x.json), or None.
    config_keys (Optional[Iterable[str]]): the dotted keys that file set.
    run_overrides (Optional[Dict[str, Any]]): exit fields set on the pipe for
        this run only (the `visualize` command's --threshold and --window).
    RETURNS (Dict[str, Any]): plain values: "pipeline", "components" (every
        early-exit component), "component", "exit_mode", "threshold",
        "thresholds", "window", "precision", "temperatures", "num_layers",
        "config", "config_keys", "run_overrides".
    RAISES (ValueError): no such early-exit component.
    """
    from ..pipes.base import EarlyExitPipe  # here: importing it pulls in torch

    pipes = {name: pipe for name, pipe in nlp.pipeline if isinstance(pipe, EarlyExitPipe)}
    if not pipes:
        raise ValueError(f"The pipeline {nlp.pipe_names} has no early-exit component")
    component = component or list(pipes)[-1]
    if component not in pipes:
        raise ValueError(f"No early-exit component {component!r}; the pipeline has {list(pipes)}")
    pipe = pipes[component]
    return {
        "pipeline": None if pipeline is None else str(pipeline),
        "components": list(pipes),
        "component": component,
        "exit_mode": pipe.exit_mode,
        "threshold": pipe.threshold,
        "thresholds": pipe.thresholds,
        "window": pipe.window,
        "precision": pipe.precision,
        "temperatures": pipe.temperatures,
        "num_layers": pipe.encoder_depth,
        "config": None if config is None else str(config),
        "config_keys": list(config_keys or []),
        "run_overrides": dict(run_overrides or {}),
    }


def _numbers(values: Sequence[float]) -> str:
    return " \u00b7 ".join(f"{value:.3g}" for value in values)


def render_setting(setting: Dict[str, Any], speedup_all: float, n_docs: int) -> str:
    """The exit setting as one box of "key value" items (see exit_setting)."""
    items: List[Tuple[str, str]] = []
    if setting.get("pipeline"):
        items.append(("pipeline", setting["pipeline"]))
    component = str(setting.get("component", ""))
    others = [name for name in setting.get("components", []) if name != component]
    items.append(("component", component + (f" (also in the pipeline: {', '.join(others)})" if others else "")))
    mode = setting.get("exit_mode")
    if mode is not None:
        items.append(("exit_mode", str(mode) + (" (no early exit: full depth)" if mode == "off" else "")))
    if setting.get("thresholds") is not None:
        items.append(("thresholds per layer", _numbers(setting["thresholds"])))
    elif setting.get("threshold") is not None:
        items.append(("threshold", f"{setting['threshold']:.3g}"))
    if setting.get("window") is not None:
        items.append(("window", f"k = {setting['window']}"))
    if setting.get("precision") is not None:
        items.append(("precision", str(setting["precision"])))
    if "temperatures" in setting:
        temperatures = setting["temperatures"]
        items.append(("temperatures", f"calibrated ({_numbers(temperatures)})" if temperatures else "not calibrated"))
    if setting.get("config"):
        keys = setting.get("config_keys") or []
        short = sorted({key.rsplit(".", 1)[-1] for key in keys})
        items.append(("config", f"{setting['config']} applied at load time" + (f" (sets {', '.join(short)})" if short else "")))
    else:
        items.append(("config", "the pipeline's own (no --config)"))
    for field, value in (setting.get("run_overrides") or {}).items():
        note = " (per-layer thresholds cleared)" if field == "threshold" else ""
        items.append(("this run", f"{field} = {value:g}{note}" if isinstance(value, (int, float)) else f"{field} = {value}{note}"))
    docs = f"{n_docs} doc{'s' if n_docs != 1 else ''}"
    items.append(("FLOPs speed-up", f"<b>{speedup_all:.2f}\u00d7</b> over {docs}"))
    spans = []
    for key, value in items:
        value = value if key == "FLOPs speed-up" else html.escape(value)
        spans.append(f'<span><span class="tokee-setting-key">{html.escape(key)}</span> {value}</span>')
    return f'<div class="tokee-setting">{"".join(spans)}</div>'
