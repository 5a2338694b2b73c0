"""The two stages' pipelines run again on the dev docs they were tuned on,
for the paired bootstrap of project/scripts/choose_stage.py."""
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy
from spacy.language import Language
from spacy.training import Example

from spacy_early_exit.loading import load_pipeline
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.paired_bootstrap import setting_counts
from spacy_early_exit.tools.sweep import encoder_depth


@dataclass(frozen=True)
class DevDocs:
    """The dev docs a tune report scored: file, --limit, spread, doc count."""

    path: Path
    limit: int
    spread: bool
    n_docs: int


def dev_docs(reports: List[Dict[str, Any]], dev: Optional[Path]) -> DevDocs:
    """The dev docs both tune reports scored; `dev` overrides the recorded file.

    reports (List[Dict[str, Any]]): the two tune reports.
    dev (Optional[Path]): the dev file (default: the one the reports name).
    RETURNS (DevDocs): the docs to run the bootstrap on.
    """
    seen = {(r.get("dev_data"), r.get("limit", 0), r.get("spread", False)) for r in reports}
    if len(seen) != 1:
        raise ValueError(f"The two tune reports read different dev docs: {sorted(seen, key=str)}")
    recorded, limit, spread = seen.pop()
    path = dev or (Path(recorded) if recorded else None)
    if path is None:
        raise ValueError("The tune reports do not name their dev data; pass --dev")
    if recorded and Path(recorded) != path:
        print(f"note: the tune reports name {recorded}; running on {path}", file=sys.stderr)
    return DevDocs(path, int(limit or 0), bool(spread), int(reports[0]["n_docs"]))


class PipelineRuns:
    """Both stages' pipelines on the tuner's dev docs: one prediction pass per
    (pipeline, exit fields), so a setting asked for twice (a target tuned to a
    static cut, both stages naming one pipeline) runs once.

    pipelines (Tuple[str, str]): the stage-1 and stage-2 pipeline folders.
    dev (DevDocs): which dev docs the tuner scored.
    metric (str): the tuned metric.
    """

    def __init__(self, pipelines: Tuple[str, str], dev: DevDocs, metric: str) -> None:
        self.pipelines, self.dev, self.metric = pipelines, dev, metric
        self.loaded: Dict[str, Tuple[Language, List[Example]]] = {}
        self.cache: Dict[Tuple[str, str], numpy.ndarray] = {}

    def load(self, stage: int) -> Tuple[Language, List[Example]]:
        """`stage`'s pipeline and its dev examples, loaded once."""
        path = self.pipelines[stage - 1]
        if path not in self.loaded:
            nlp = load_pipeline(path)
            # The same docs the tuner read: `tune` loads dev with load_examples and its --limit.
            examples = load_examples(nlp, self.dev.path, self.dev.limit, self.dev.spread)
            if len(examples) != self.dev.n_docs:
                raise ValueError(f"{self.dev.path} (limit {self.dev.limit}) gives {len(examples)} docs; the tune reports scored {self.dev.n_docs}")
            self.loaded[path] = (nlp, examples)
        return self.loaded[path]

    def depth(self, stage: int) -> int:
        """The encoder depth of `stage`'s pipeline."""
        return encoder_depth(self.load(stage)[0])

    def counts(self, stage: int, fields: Dict[str, Any]) -> numpy.ndarray:
        """Per-doc counts, shape (n_docs, 3), of `stage` under the exit `fields`."""
        key = (self.pipelines[stage - 1], json.dumps(fields, sort_keys=True))
        if key not in self.cache:
            nlp, examples = self.load(stage)
            self.cache[key] = setting_counts(nlp, examples, fields, self.metric)
        return self.cache[key]
