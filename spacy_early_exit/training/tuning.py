"""Choose exit settings on held-out data for target FLOPs speed-ups.

The FLOPs speed-up grows with the threshold (a higher threshold lets tokens
leave sooner), so the smallest threshold that reaches a target, the most
accurate one that is fast enough, is found by bisection. `tune` does this for
every TOKEE window of a list and keeps, per target, the window whose point
scores best. Every point is a real run through `nlp.pipe`: an exited token
changes the states of the tokens above it, so exits cannot be simulated offline
from full-depth logits.

Tuning is meant for dev data only; the chosen settings are reported on test
elsewhere (`evaluate`).
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Config
from tqdm import tqdm

from ..evaluation import cost_summary, early_exit_pipes, exit_settings, score

# Thresholds are searched on a 4-decimal grid, so the reported threshold is
# exactly the one that was run (no rounding after the search).
GRID = 10_000
DEFAULT_TARGETS = (2.0, 3.0, 4.0)
DEFAULT_WINDOWS = (0, 1, 2, 3, 4)

Number = TypeVar("Number", int, float)


# -- the original single-window search (used by `evaluate` and benchmarks) -----


def flops_speedup(nlp: Language, texts: Sequence[str], fields: dict, batch_size: int = 64) -> float:
    """Corpus FLOPs speed-up of `nlp` on `texts` with the given exit fields."""
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe(texts, batch_size=batch_size))
    return cost_summary(docs, nlp)["flops_speedup"]


def threshold_for_speedup(
    nlp: Language,
    texts: Sequence[str],
    target: float,
    exit_mode: str = "tokee",
    window: int = 2,
    steps: int = 12,
) -> Optional[float]:
    """The smallest threshold whose FLOPs speed-up on `texts` reaches `target`.

    RETURNS (Optional[float]): the threshold (rounded up to 4 decimals), or
        None when even threshold 1.0 does not reach the target.
    """
    fields = {"exit_mode": exit_mode, "window": window, "thresholds": None}
    if flops_speedup(nlp, texts, {**fields, "threshold": 1.0}) < target:
        return None
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if flops_speedup(nlp, texts, {**fields, "threshold": middle}) >= target:
            high = middle
        else:
            low = middle
    return round(high + 5e-5, 4) if high < 1.0 else 1.0


def texts_of(docs: Sequence[Doc]) -> list:
    return [doc.text for doc in docs]


# -- measuring one setting -------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """Score and cost of one exit setting on a data set.

    score (Optional[float]): the metric as spaCy reports it (0-1); None when
        the scorer has nothing to score (e.g. no gold or predicted entities).
    flops_speedup (float): corpus FLOPs speed-up against full depth.
    mean_exit_layer (float): mean 1-based exit layer over scored tokens.
    """

    score: Optional[float]
    flops_speedup: float
    mean_exit_layer: float

    def as_row(self) -> Dict[str, Any]:
        """Rounded like `evaluation.compare` rows: score in 0-100."""
        return {
            "score": round(100.0 * self.score, 2) if self.score is not None else None,
            "flops_speedup": round(self.flops_speedup, 3),
            "mean_exit_layer": round(self.mean_exit_layer, 3),
        }

    @property
    def rank_score(self) -> float:
        """The score for ranking; a missing score ranks below every real one."""
        return self.score if self.score is not None else float("-inf")


def main_metric(nlp: Language) -> str:
    """The first early-exit component's main score key: the highest default
    score weight among the keys its scorer reports.

    nlp (Language): the pipeline.
    RETURNS (str): e.g. "ents_f" for `tokee_ner`.
    """
    name, pipe = early_exit_pipes(nlp)[0]
    # Only keys the component's scorer really reports: a tagger with
    # attribute "pos" declares weights for tag_acc and pos_acc but reports one.
    reported = set(pipe.score([]))
    defaults = nlp.get_pipe_meta(name).default_score_weights
    weights = {k: w for k, w in defaults.items() if w is not None and k in reported}
    if not weights:
        raise ValueError(f"Component '{name}' declares no score weights; pass a metric explicitly")
    return max(weights, key=lambda key: weights[key])


def metric_value(scores: Dict[str, Any], metric: str) -> Optional[float]:
    """`scores[metric]` as a float; fails naming the available keys when it is absent.

    scores (Dict[str, Any]): spaCy's scores.
    metric (str): the key.
    RETURNS (Optional[float]): the value, or None when the scorer gave None.
    """
    if metric not in scores:
        raise ValueError(f"Metric {metric!r} not in the scores: {sorted(scores)}")
    value = scores[metric]
    return float(value) if value is not None else None


def measure(
    nlp: Language, examples: Sequence[Example], fields: Dict[str, Any], metric: str, batch_size: int = 64
) -> Measurement:
    """Run `examples` through `nlp` with the exit `fields` and score them.

    nlp (Language): the pipeline (its settings are restored afterwards).
    examples (Sequence[Example]): gold examples.
    fields (Dict[str, Any]): exit fields, as for `evaluation.exit_settings`.
    metric (str): the score key.
    batch_size (int): `nlp.pipe` batch size.
    RETURNS (Measurement): score, FLOPs speed-up and mean exit layer.
    """
    with exit_settings(nlp, fields):
        scores, cost = score(nlp, examples, batch_size=batch_size)
    return Measurement(metric_value(scores, metric), cost["flops_speedup"], cost["mean_exit_layer"])


# -- tuning: bisection per window, best window per target -------------------------


def tokee_fields(window: int, threshold: float) -> Dict[str, Any]:
    """Exit fields of one TOKEE point. Per-layer `thresholds` are cleared
    because they would override the single threshold being searched."""
    return {"exit_mode": "tokee", "window": window, "threshold": threshold, "thresholds": None}


def grid_threshold(step: int) -> float:
    """The threshold of grid step `step` (0..GRID)."""
    return round(step / GRID, 4)


class Prober:
    """Measures TOKEE points, each (window, grid step) at most once.

    Bisections for several targets on the same window share their runs.

    nlp (Language): the pipeline.
    examples (Sequence[Example]): the dev examples.
    metric (str): the score key.
    batch_size (int): `nlp.pipe` batch size.
    """

    def __init__(self, nlp: Language, examples: Sequence[Example], metric: str, batch_size: int = 64) -> None:
        self.nlp = nlp
        self.examples = examples
        self.metric = metric
        self.batch_size = batch_size
        self.cache: Dict[int, Dict[int, Measurement]] = {}

    def __call__(self, window: int, step: int) -> Measurement:
        probed = self.cache.setdefault(window, {})
        if step not in probed:
            fields = tokee_fields(window, grid_threshold(step))
            probed[step] = measure(self.nlp, self.examples, fields, self.metric, self.batch_size)
        return probed[step]

    def probed(self, window: int) -> Dict[int, Measurement]:
        """Every grid step run so far for `window`."""
        return self.cache.get(window, {})


@dataclass
class Candidate:
    """The bisection's answer for one window and target.

    window (int): TOKEE's k.
    target (float): the FLOPs speed-up to reach.
    step (Optional[int]): the grid step chosen; None when threshold 1.0 misses the target.
    point (Measurement): the chosen point, or threshold 1.0's when unreachable.
    """

    window: int
    target: float
    step: Optional[int]
    point: Measurement

    @property
    def reached(self) -> bool:
        return self.step is not None

    @property
    def threshold(self) -> Optional[float]:
        return grid_threshold(self.step) if self.step is not None else None

    def as_row(self) -> Dict[str, Any]:
        row = {"window": self.window, "threshold": self.threshold, "reached": self.reached, **self.point.as_row()}
        if not self.reached:
            # Threshold 1.0's speed-up: the most this window can give.
            row["max_flops_speedup"] = row.pop("flops_speedup")
            row["score"] = None
        return row


def bracket(probed: Dict[int, Measurement], target: float) -> Tuple[int, int]:
    """Grid steps (low, high) with low below the target and high reaching it.

    Built from earlier runs so later targets start from a narrow interval. The
    speed-up need not be exactly monotone (exits move upper-layer states), so
    `high` is the first run reaching the target above the last run missing it:
    a measured point, never an assumption. Step 0 (threshold 0) counts as
    missing: with nothing exiting, the extra off-ramps make it slower than full.

    probed (Dict[int, Measurement]): runs so far; must contain a step reaching the target.
    target (float): the FLOPs speed-up.
    RETURNS (Tuple[int, int]): the interval to bisect.
    """
    low = max([0] + [s for s, m in probed.items() if m.flops_speedup < target])
    high = min(s for s, m in probed.items() if s > low and m.flops_speedup >= target)
    return low, high


def search_window(prober: Prober, window: int, target: float, steps: int) -> Candidate:
    """The smallest grid threshold whose FLOPs speed-up reaches `target` with this window.

    prober (Prober): runs and caches points.
    window (int): TOKEE's k.
    target (float): the FLOPs speed-up to reach.
    steps (int): the most bisection runs (14 resolve the 4-decimal grid fully; 12 leave it within 0.0003).
    RETURNS (Candidate): the chosen point, or an unreachable candidate.
    """
    top = prober(window, GRID)
    if top.flops_speedup < target:
        return Candidate(window, target, None, top)
    low, high = bracket(prober.probed(window), target)
    for _ in range(steps):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if prober(window, middle).flops_speedup >= target:
            high = middle
        else:
            low = middle
    return Candidate(window, target, high, prober(window, high))


def best_candidate(candidates: Sequence[Candidate]) -> Optional[Candidate]:
    """The reached candidate with the best score; ties go to the faster, then the smaller window."""
    reached = [c for c in candidates if c.reached]
    if not reached:
        return None
    return max(reached, key=lambda c: (c.point.rank_score, c.point.flops_speedup, -c.window))


def unreachable_reason(target: float, candidates: Sequence[Candidate]) -> str:
    """Why no window reaches `target`, with the most any window gives."""
    most = max(c.point.flops_speedup for c in candidates)
    return (
        f"no window reaches {target:g}x on this data: threshold 1.0 (every token exits "
        f"after layer 1) gives at most {most:.2f}x"
    )


def target_report(nlp: Language, target: float, candidates: Sequence[Candidate]) -> Dict[str, Any]:
    """One target's entry in the tune report."""
    best = best_candidate(candidates)
    entry: Dict[str, Any] = {"target": target, "reachable": best is not None}
    if best is None:
        entry.update(exit_mode=None, window=None, threshold=None, score=None, flops_speedup=None, mean_exit_layer=None)
        entry["reason"] = unreachable_reason(target, candidates)
    else:
        entry.update(exit_mode="tokee", window=best.window, threshold=best.threshold, **best.point.as_row())
        entry["overrides"] = config_overrides(nlp, tokee_fields(best.window, best.threshold))
    entry["candidates"] = [c.as_row() for c in candidates]
    return entry


def tune(
    nlp: Language,
    examples: Sequence[Example],
    targets: Sequence[float] = DEFAULT_TARGETS,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    metric: Optional[str] = None,
    steps: int = 12,
    batch_size: int = 64,
    progress: bool = False,
) -> Dict[str, Any]:
    """For each target FLOPs speed-up, the TOKEE (window, threshold) that scores best while reaching it.

    nlp (Language): the pipeline; its exit settings are restored afterwards.
    examples (Sequence[Example]): dev examples (never test).
    targets (Sequence[float]): FLOPs speed-ups to reach.
    windows (Sequence[int]): TOKEE windows k to try.
    metric (Optional[str]): score key; None = the early-exit component's main score.
    steps (int): the most bisection runs per window and target.
    batch_size (int): `nlp.pipe` batch size.
    progress (bool): show a progress bar.
    RETURNS (Dict[str, Any]): JSON-ready report: the full-depth reference, one
        entry per target (window, threshold, score, speed-up, config overrides,
        every window's candidate; or `reachable: false` and a reason), and every
        run made per window.
    """
    if not targets or not windows:
        raise ValueError("tune needs at least one target and one window")
    if any(not t > 0 for t in targets):
        raise ValueError(f"Target speed-ups must be positive; got {list(targets)}")
    metric = metric or main_metric(nlp)
    prober = Prober(nlp, examples, metric, batch_size)
    full = measure(nlp, examples, {"exit_mode": "off"}, metric, batch_size)
    entries = []
    with tqdm(total=len(targets) * len(windows), desc="tune", disable=not progress) as bar:
        for target in targets:
            candidates = []
            for window in windows:
                candidates.append(search_window(prober, window, target, steps))
                bar.update(1)
            entries.append(target_report(nlp, target, candidates))
    return {
        "metric": metric,
        "n_docs": len(examples),
        "full": {"exit_mode": "off", **full.as_row()},
        "targets": entries,
        "runs": {
            str(window): [{"threshold": grid_threshold(s), **m.as_row()} for s, m in sorted(prober.probed(window).items())]
            for window in windows
        },
    }


# -- writing the chosen settings ------------------------------------------------------


def config_overrides(nlp: Language, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted config overrides that set `fields` on every early-exit component:
    the form `spacy.load(path, config=...)` accepts."""
    return {f"components.{name}.{key}": value for name, _ in early_exit_pipes(nlp) for key, value in fields.items()}


def target_stem(target: float) -> str:
    """File stem of a target: 2.0 -> "2x", 2.5 -> "2.5x"."""
    return f"{target:g}x"


def write_overrides(overrides: Dict[str, Any], path: Path) -> Path:
    """Write config overrides as JSON (load with `spacy.load(p, config=json.load(f))`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(overrides, indent=2) + "\n", encoding="utf8")
    return path


def apply_overrides(config: Config, overrides: Dict[str, Any]) -> Config:
    """Set dotted `overrides` in `config`, in place; every section must exist.

    config (Config): an uninterpolated pipeline config.
    overrides (Dict[str, Any]): e.g. {"components.tokee_ner.threshold": 0.3}.
    RETURNS (Config): the same config.
    """
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        table = config
        for section in sections:
            if section not in table:
                raise KeyError(f"Config has no section {'.'.join(sections)!r} for override {dotted!r}")
            table = table[section]
        table[key] = value
    return config


def save_tuned_pipeline(nlp: Language, overrides: Dict[str, Any], path: Path) -> Path:
    """Save `nlp` to `path` with `overrides` written into its config.cfg.

    Exit settings live in the config (spacy.load reads them from there), so a
    copy whose config carries the chosen values loads with them.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # nlp.to_disk makes only the last folder
    nlp.to_disk(path)
    config_path = Path(path) / "config.cfg"
    # interpolate=False keeps ${...} references as they were.
    config = apply_overrides(Config().from_disk(config_path, interpolate=False), overrides)
    config.to_disk(config_path)
    return Path(path)


def write_tuned(
    nlp: Language, report: Dict[str, Any], configs_dir: Optional[Path], pipelines_dir: Optional[Path]
) -> None:
    """Write each reachable target's overrides and/or tuned pipeline copy; records the paths in `report`.

    nlp (Language): the tuned pipeline.
    report (Dict[str, Any]): `tune`'s report (updated in place).
    configs_dir (Optional[Path]): folder for `<target>x.json` overrides.
    pipelines_dir (Optional[Path]): folder for `<target>x/` pipeline copies.
    """
    for entry in report["targets"]:
        if not entry["reachable"]:
            continue
        stem = target_stem(entry["target"])
        if configs_dir is not None:
            entry["config_path"] = str(write_overrides(entry["overrides"], Path(configs_dir) / f"{stem}.json"))
        if pipelines_dir is not None:
            entry["pipeline_path"] = str(save_tuned_pipeline(nlp, entry["overrides"], Path(pipelines_dir) / stem))


def format_tune_report(report: Dict[str, Any]) -> str:
    """One line per target, for the terminal."""
    full = report["full"]
    lines = [f"full depth: {report['metric']}={full['score']} (1.00x) on {report['n_docs']} docs"]
    for entry in report["targets"]:
        if entry["reachable"]:
            lines.append(
                f"{entry['target']:g}x: window {entry['window']}, threshold {entry['threshold']}: "
                f"{report['metric']}={entry['score']}, FLOPs x{entry['flops_speedup']:.2f}"
            )
        else:
            lines.append(f"{entry['target']:g}x: UNREACHABLE: {entry['reason']}")
    return "\n".join(lines)


def parse_numbers(text: str, kind: Callable[[str], Number], option: str) -> List[Number]:
    """A comma-separated option ("2,3,4") as numbers; fails naming the option.

    text (str): the option's value.
    kind (Callable[[str], Number]): int or float.
    option (str): the option name, for the error.
    """
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers; got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values
