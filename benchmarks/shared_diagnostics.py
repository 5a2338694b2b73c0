"""Where joint exits cost accuracy on a shared encoder (tokee_transformer + listening heads).

From one full-depth pass over a split, with every head's columns of every
off-ramp:

1. per head and layer: token accuracy of the off-ramp (for a head with an
   outside class "O", also on the entity tokens, gold not O), its mean
   calibrated normalized entropy, and agreement with the head's last layer;
2. per tuned target of the pipeline's tune report: the TOKEE rule replayed
   on those logits (`exits.joint_uncertainty`, `exits.exit_decisions`), and at
   every layer where tokens are still active, the share of active tokens held
   back, by which head (the one whose windowed uncertainty is the max) and
   whether that head alone holds them (every other head is below the
   threshold, so without it they would have left). The replayed joint exit
   layers are checked against the real pipeline's
   ``doc._.early_exit[<transformer>]["exit_layers"]`` on the same docs: the
   replay cannot see that halted tokens change the states above them, so a
   few tokens may differ;
3. per target: the mean exit layer under the joint rule and under each head
   alone at the same thresholds, with each head's token accuracy at those exits.

    python benchmarks/shared_diagnostics.py uner_ud_en_ewt --split test --limit 600 --threads 1

Reads, under project/: training/<dataset>/<pipeline>, metrics/<dataset>/tune.json
and corpus/<dataset>/<split>.spacy. Writes
benchmarks/results/shared_diagnostics_<dataset>_<split>.json and prints Markdown tables.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import spacy
import torch
import typer
from spacy.language import Language
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
from run import PROJECT, RESULTS  # noqa: E402
from shared import tuned_targets  # noqa: E402

from spacy_early_exit.encoder.exits import ExitPolicy, exit_decisions, joint_uncertainty, normalized_entropy, window_max  # noqa: E402
from spacy_early_exit.layers.architecture import get_shim  # noqa: E402
from spacy_early_exit.pipes.head import TaskHead  # noqa: E402
from spacy_early_exit.pipes.record import read_record  # noqa: E402
from spacy_early_exit.tools.data import load_examples  # noqa: E402
from spacy_early_exit.tools.evaluate import early_exit_pipes, exit_settings  # noqa: E402
from spacy_early_exit.tools.heads import shared_heads  # noqa: E402
from spacy_early_exit.tools.prescreen import full_depth_rows  # noqa: E402
from spacy_early_exit.tools.options import parse_numbers  # noqa: E402

OUTSIDE = "O"


@dataclass
class HeadSide:
    """One head's part of a `FullPass`.

    name (str): the listening component's name.
    index (int): its place in the encoder's head order (for its temperatures).
    columns (Tuple[int, int]): its (start, stop) columns of the fused off-ramps.
    gold (torch.Tensor): long ``[rows, words]``, gold class id, -1 where unscored.
    outside (Optional[int]): the outside class's id, if the head has one.
    """

    name: str
    index: int
    columns: Tuple[int, int]
    gold: torch.Tensor
    outside: Optional[int]


@dataclass
class FullPass:
    """Every off-ramp's fused logits for every word of a split, at full depth.

    logits (torch.Tensor): ``[layers, rows, words, classes]``, every head's columns side by side.
    mask (torch.Tensor): bool ``[rows, words]``, real words.
    head_sizes (Tuple[int, ...]): the encoder's class count per head, in its head order.
    heads (List[HeadSide]): the heads in the pipeline.
    token_rows (List[numpy.ndarray]): per doc, each token's row (-1: no wordpieces).
    token_slots (List[numpy.ndarray]): per doc, each token's word slot in its row.
    """

    logits: torch.Tensor
    mask: torch.Tensor
    head_sizes: Tuple[int, ...]
    heads: List[HeadSide]
    token_rows: List[numpy.ndarray]
    token_slots: List[numpy.ndarray]

    @property
    def num_layers(self) -> int:
        return int(self.logits.shape[0])

    def predicted(self, head: HeadSide) -> torch.Tensor:
        """The head's argmax at every layer, long ``[layers, rows, words]``."""
        start, stop = head.columns
        return self.logits[..., start:stop].argmax(dim=-1)

    def head_uncertainty(self, head: HeadSide, policy: ExitPolicy) -> torch.Tensor:
        """The head's normalized entropy with its own temperatures, ``[layers, rows, words]``."""
        start, stop = head.columns
        n_heads = len(self.head_sizes)
        return torch.stack([
            normalized_entropy(self.logits[l, ..., start:stop], policy.layer_temperatures(l + 1, n_heads)[head.index])
            for l in range(self.num_layers)
        ])

    def joint_uncertainty(self, policy: ExitPolicy) -> torch.Tensor:
        """What the encoder's rule reads: the max over heads, ``[layers, rows, words]``."""
        n_heads = len(self.head_sizes)
        return torch.stack([
            joint_uncertainty(self.logits[l], self.head_sizes, policy.layer_temperatures(l + 1, n_heads))
            for l in range(self.num_layers)
        ])


def collect_pass(
    transformer: Any, heads: Sequence[Tuple[str, TaskHead]], examples: Sequence[Example], batch_size: int = 64
) -> FullPass:
    """Run `examples` once at full depth through a shared encoder, at its precision.

    transformer (Any): the `tokee_transformer`.
    heads (Sequence[Tuple[str, TaskHead]]): its listening components, in head order.
    examples (Sequence[Example]): gold examples.
    batch_size (int): docs per forward pass.
    RETURNS (FullPass): the padded logits, gold per head and each token's (row, slot).
    """
    model = transformer.model
    per_row: List[Tuple[torch.Tensor, List[numpy.ndarray]]] = []
    token_rows: List[numpy.ndarray] = []
    token_slots: List[numpy.ndarray] = []
    for batch in full_depth_rows(model, heads, examples, batch_size, transformer.policy.precision):
        # Rows are numbered per batch: shift them to the split's global numbering.
        base = len(per_row)
        for layout in batch.layouts:
            token_rows.append(numpy.where(layout.token_rows >= 0, layout.token_rows + base, -1))
            token_slots.append(numpy.asarray(layout.token_slots))
        per_row.extend(zip(batch.logits, batch.golds))
    encoder = get_shim(model).encoder
    n_layers, n_classes = encoder.num_layers, encoder.n_classes
    width = max([part.shape[1] for part, _ in per_row] + [1])
    padded = torch.zeros(n_layers, len(per_row), width, n_classes)
    mask = torch.zeros(len(per_row), width, dtype=torch.bool)
    gold = torch.full((len(heads), len(per_row), width), -1, dtype=torch.long)
    for i, (part, row_gold) in enumerate(per_row):
        n = part.shape[1]
        padded[:, i, :n] = part
        mask[i, :n] = True
        for h, g in enumerate(row_gold):
            gold[h, i, :n] = torch.as_tensor(g)
    sides = []
    for h, (name, head) in enumerate(heads):
        names = head.class_names
        outside = names.index(OUTSIDE) if OUTSIDE in names else None
        sides.append(HeadSide(name, transformer.head_names.index(name), transformer.head_columns(name), gold[h], outside))
    return FullPass(padded, mask, tuple(encoder.head_sizes), sides, token_rows, token_slots)


def replay_exits(uncertainty: torch.Tensor, mask: torch.Tensor, policy: ExitPolicy) -> torch.Tensor:
    """Exit layers the encoder's rule gives on full-depth uncertainties.

    uncertainty (torch.Tensor): ``[layers, rows, words]``, temperatures applied.
    mask (torch.Tensor): bool ``[rows, words]``.
    policy (ExitPolicy): the exit setting (its mode, window and thresholds).
    RETURNS (torch.Tensor): long ``[rows, words]``, 1-based, 0 on padding.
    """
    n_layers = uncertainty.shape[0]
    exits = torch.zeros(mask.shape, dtype=torch.long)
    active = mask.clone()
    if policy.mode != "off":
        for layer in range(1, n_layers):
            leaving = exit_decisions(uncertainty[layer - 1], active, policy, layer)
            exits[leaving] = layer
            active &= ~leaving
    exits[active] = n_layers
    return exits


def layer_rows(full: FullPass, policy: ExitPolicy) -> Dict[str, List[Dict[str, Any]]]:
    """Per head, per layer at full depth: accuracy (and on entity tokens), mean
    calibrated normalized entropy, agreement with the head's last layer; all
    over the head's gold-labeled tokens.

    full (FullPass): the full-depth pass.
    policy (ExitPolicy): the pipeline's setting (its temperatures).
    RETURNS (Dict[str, List[Dict[str, Any]]]): head name -> one row per layer.
    """
    out: Dict[str, List[Dict[str, Any]]] = {}
    for head in full.heads:
        scored = head.gold >= 0
        gold = head.gold[scored]
        predicted = full.predicted(head)
        uncertainty = full.head_uncertainty(head, policy)
        last = predicted[-1][scored]
        rows = []
        for layer in range(full.num_layers):
            pred = predicted[layer][scored]
            row: Dict[str, Any] = {"layer": layer + 1, "accuracy": share(pred == gold)}
            if head.outside is not None:
                entity = gold != head.outside
                row["entity_accuracy"] = share((pred == gold)[entity])
            row["entropy"] = round(float(uncertainty[layer][scored].mean()), 4) if scored.any() else None
            row["agree_last"] = share(pred == last)
            rows.append(row)
        out[head.name] = rows
    return out


def hold_back_rows(full: FullPass, policy: ExitPolicy) -> List[Dict[str, Any]]:
    """At every layer with active tokens under the joint rule, who keeps them in.

    A token stays when the window max of the joint uncertainty is at or above
    the layer's threshold. The max over heads commutes with the window max,
    so each head's own windowed uncertainty (over the same active tokens)
    says which head is above: `max` is the head with the largest one, `alone`
    counts the tokens only that head keeps (every other head would let them
    leave), and `several` those more than one head keeps.

    full (FullPass): the full-depth pass.
    policy (ExitPolicy): the exit setting.
    RETURNS (List[Dict[str, Any]]): per layer 1..L-1 with active tokens: the
        threshold, active tokens, the share held, and per head the shares of
        active tokens held with that head the max and held by it alone.
    """
    joint = full.joint_uncertainty(policy)
    per_head = [full.head_uncertainty(head, policy) for head in full.heads]
    window = None if policy.mode == "sentee" else policy.window
    active = full.mask.clone()
    rows: List[Dict[str, Any]] = []
    if policy.mode == "off":
        return rows
    for layer in range(1, full.num_layers):
        n_active = int(active.sum())
        if not n_active:
            break
        threshold = policy.layer_threshold(layer)
        leaving = exit_decisions(joint[layer - 1], active, policy, layer)
        held = active & ~leaving
        windowed = torch.stack([
            window_max(torch.where(active, u[layer - 1], torch.zeros_like(u[layer - 1])), window) for u in per_head
        ])
        above = held[None] & (windowed >= threshold)
        top = windowed.argmax(dim=0)
        n_above = above.sum(dim=0)
        row: Dict[str, Any] = {
            "layer": layer, "threshold": round(threshold, 4), "active": n_active,
            "held": round(int(held.sum()) / n_active, 4),
        }
        for h, head in enumerate(full.heads):
            row[f"max:{head.name}"] = round(int((held & (top == h)).sum()) / n_active, 4)
            row[f"alone:{head.name}"] = round(int((above[h] & (n_above == 1)).sum()) / n_active, 4)
        row["several"] = round(int((held & (n_above > 1)).sum()) / n_active, 4)
        rows.append(row)
        active &= ~leaving
    return rows


def exit_accuracy(full: FullPass, head: HeadSide, exits: torch.Tensor) -> Dict[str, Optional[float]]:
    """The head's token (and entity-token) accuracy reading each word at its exit layer."""
    scored = head.gold >= 0
    index = (exits.clamp(min=1) - 1)[None]
    predicted = full.predicted(head).gather(0, index)[0][scored]
    gold = head.gold[scored]
    out = {"accuracy": share(predicted == gold)}
    if head.outside is not None:
        out["entity_accuracy"] = share((predicted == gold)[gold != head.outside])
    return out


def setting_report(full: FullPass, policy: ExitPolicy) -> Dict[str, Any]:
    """Replayed exits under the joint rule and under each head alone, and who holds tokens back.

    full (FullPass): the full-depth pass.
    policy (ExitPolicy): the exit setting.
    RETURNS (Dict[str, Any]): ``mean_exit_layer`` (joint and per head alone),
        ``accuracy`` per head (full depth, at joint exits, at its own exits
        alone), ``hold_back`` rows, and the joint ``exits`` tensor (not JSON).
    """
    joint = replay_exits(full.joint_uncertainty(policy), full.mask, policy)
    alone = {head.name: replay_exits(full.head_uncertainty(head, policy), full.mask, policy) for head in full.heads}
    last = torch.full_like(joint, full.num_layers)
    return {
        "mean_exit_layer": {"joint": mean_layer(joint, full.mask), **{f"{n} alone": mean_layer(e, full.mask) for n, e in alone.items()}},
        "accuracy": {
            head.name: {
                "full": exit_accuracy(full, head, last), "joint": exit_accuracy(full, head, joint),
                "alone": exit_accuracy(full, head, alone[head.name]),
            }
            for head in full.heads
        },
        "hold_back": hold_back_rows(full, policy),
        "exits": joint,
    }


def real_agreement(nlp: Language, full: FullPass, examples: Sequence[Example], exits: torch.Tensor, owner: str, batch_size: int = 64) -> Dict[str, Any]:
    """Run the pipeline (under the exit setting in force) and compare its
    recorded exit layers with the replayed ones, token by token.

    nlp (Language): the pipeline.
    full (FullPass): the pass `exits` came from, on the same examples.
    examples (Sequence[Example]): the examples.
    exits (torch.Tensor): replayed joint exit layers ``[rows, words]``.
    owner (str): the transformer's name (its record).
    RETURNS (Dict[str, Any]): tokens compared, the share that agree, the
        earliest layer where they differ (the replay is exact until a halted
        token changes the states above it), the real mean exit layer.
    """
    same = compared = 0
    earliest: Optional[int] = None
    real_layers: List[int] = []
    docs = nlp.pipe((eg.predicted.text for eg in examples), batch_size=batch_size)
    for doc, rows, slots in zip(docs, full.token_rows, full.token_slots):
        record = read_record(doc, owner)
        if record is None or len(record["exit_layers"]) != len(rows):
            raise ValueError(f"'{owner}' wrote no record of the same tokens for {doc.text[:40]!r}")
        for layer, row, slot in zip(record["exit_layers"], rows.tolist(), slots.tolist()):
            if row < 0:
                continue
            compared += 1
            replayed = int(exits[row, slot])
            if layer == replayed:
                same += 1
            else:
                earliest = min(earliest or layer, layer, replayed)
            real_layers.append(int(layer))
    return {
        "tokens": compared,
        "agreement": round(same / compared, 4) if compared else None,
        "earliest_mismatch_layer": earliest,
        "real_mean_exit_layer": round(sum(real_layers) / len(real_layers), 3) if real_layers else None,
    }


def share(values: torch.Tensor) -> Optional[float]:
    """The share of True in a bool tensor, 4 decimals; None when empty."""
    return round(float(values.float().mean()), 4) if values.numel() else None


def mean_layer(exits: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean exit layer over the real words."""
    return round(float(exits[mask].float().mean()), 3) if mask.any() else 0.0


def short(name: str) -> str:
    """A head's name for a table header: `tokee_ner` -> `ner`."""
    return name[len("tokee_"):] if name.startswith("tokee_") else name


def cell(value: Any) -> str:
    """A table cell: three decimals, or the README's dash for a value that does not apply."""
    return "\u2013" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def table(header: List[str], rows: List[List[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(report: Dict[str, Any]) -> str:
    """The Markdown tables of a report: per-layer ramps, hold-back per target, exit summary."""
    heads = list(report["layers"])
    out = []
    header, rows = ["layer"], []
    for head in heads:
        keys = [k for k in report["layers"][head][0] if k != "layer"]
        header += [f"{short(head)} {k}" for k in keys]
    for i in range(len(report["layers"][heads[0]])):
        row: List[Any] = [i + 1]
        for head in heads:
            row += [v for k, v in report["layers"][head][i].items() if k != "layer"]
        rows.append(row)
    out.append(f"Per-layer off-ramps at full depth ({report['docs']} docs, {report['split']}):\n\n" + table(header, rows))
    for setting in report["settings"]:
        keys = [k for k in (setting["hold_back"][0] if setting["hold_back"] else {}) if k not in ("layer",)]
        rows = [[r["layer"]] + [r[k] for k in keys] for r in setting["hold_back"]]
        names = {"max": "max", "alone": "only"}
        header = ["layer"] + [f"{short(k.split(':')[1])} {names[k.split(':')[0]]}" if ":" in k else k for k in keys]
        rule = setting["rule"]
        out.append(f"{setting['target']}x ({rule['mode']}, window {cell(rule['window'])}, thresholds "
                   f"{rule['thresholds']}): share of active tokens held back; '<head> max': the head with the "
                   "largest windowed uncertainty, '<head> only': no other head above the threshold\n\n" + table(header, rows))
    header = ["target", "replay agrees", "first mismatch", "real mean exit", "joint (replay)"] + [f"{short(h)} alone" for h in heads]
    for head in heads:
        header += [f"{short(head)} acc full/joint/alone"]
    rows = []
    for setting in report["settings"]:
        exits = setting["mean_exit_layer"]
        real = setting["real"]
        row = [f"{setting['target']}x", real["agreement"], real["earliest_mismatch_layer"], real["real_mean_exit_layer"], exits["joint"]]
        row += [exits[f"{h} alone"] for h in heads]
        for head in heads:
            acc = setting["accuracy"][head]
            key = "entity_accuracy" if "entity_accuracy" in acc["full"] else "accuracy"
            row.append("/".join(cell(acc[part][key]) for part in ("full", "joint", "alone")) + (" (ent)" if key != "accuracy" else ""))
        rows.append(row)
    out.append("Mean exit layer, joint rule against each head alone at the same thresholds:\n\n" + table(header, rows))
    return "\n\n".join(out)


def diagnose(
    nlp: Language, examples: Sequence[Example], settings: Sequence[Tuple[str, Dict[str, Any], Language]], batch_size: int = 64
) -> Dict[str, Any]:
    """Everything the script reports, without files: per-layer rows on `nlp`
    and per setting its replay, hold-back rows and the real pipeline's agreement.

    nlp (Language): the shared pipeline of the per-layer rows.
    examples (Sequence[Example]): gold examples made with its tokenizer.
    settings (Sequence[Tuple[str, Dict[str, Any], Language]]): (label, exit fields, pipeline they apply to).
    batch_size (int): docs per batch.
    RETURNS (Dict[str, Any]): ``layers`` and ``settings``, JSON-ready.
    """
    passes: Dict[int, FullPass] = {}

    def full_pass(model: Language) -> Tuple[Any, FullPass]:
        heads = shared_heads(model)
        if heads is None:
            raise ValueError(f"The pipeline {model.pipe_names} has no shared tokee_transformer")
        owner = early_exit_pipes(model)[0][1]
        if id(model) not in passes:
            passes[id(model)] = collect_pass(owner, heads, examples, batch_size)
        return owner, passes[id(model)]

    owner, full = full_pass(nlp)
    report: Dict[str, Any] = {"layers": layer_rows(full, owner.policy), "settings": []}
    for label, fields, model in settings:
        owner, full = full_pass(model)
        with exit_settings(model, fields):
            policy = owner.policy
            found = setting_report(full, policy)
            real = real_agreement(model, full, examples, found.pop("exits"), owner.name, batch_size)
        rule = {"mode": policy.mode, "window": policy.window if policy.mode == "tokee" else None,
                "thresholds": [policy.layer_threshold(l) for l in range(1, full.num_layers + 1)]}
        report["settings"].append({"target": label, "fields": fields, "rule": rule, **found, "real": real})
    return report


def main(
    dataset: str = typer.Argument(..., help="Corpus name (project/corpus/<dataset>)"),
    pipeline: str = typer.Option("final", help="Shared pipeline under project/training/<dataset>/ for the per-layer rows"),
    split: str = typer.Option("dev", help="dev or test"),
    targets: str = typer.Option("2,3", help="Tuned targets of metrics/<dataset>/tune.json, comma-separated"),
    limit: int = typer.Option(0, help="First N docs of the split; 0 = all"),
    batch_size: int = typer.Option(64, help="Docs per batch"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    if split not in ("dev", "test"):
        raise typer.BadParameter(f"--split must be dev or test, not {split!r}")
    torch.set_num_threads(threads)
    default = PROJECT / "training" / dataset / pipeline
    tuned, missing = tuned_targets(PROJECT / "metrics" / dataset / "tune.json", PROJECT, default, parse_numbers(targets, int, "--targets"))
    for line in missing:
        print(f"skipped: {line}")
    loaded: Dict[Path, Language] = {}

    def load(path: Path) -> Language:
        # A target may name another stage's pipeline; each folder loads once.
        if path.resolve() not in loaded:
            loaded[path.resolve()] = spacy.load(path)
        return loaded[path.resolve()]

    nlp = load(default)
    examples = load_examples(nlp, PROJECT / "corpus" / dataset / f"{split}.spacy", limit=limit)
    settings = [(str(t), entry.fields, load(entry.pipeline)) for t, entry in sorted(tuned.items())]
    found = diagnose(nlp, examples, settings, batch_size)
    for setting, (_, entry) in zip(found["settings"], sorted(tuned.items())):
        setting["pipeline"] = str(entry.pipeline.relative_to(PROJECT)) if entry.pipeline.is_relative_to(PROJECT) else str(entry.pipeline)
    report = {
        "corpus": dataset, "pipeline": pipeline, "split": split, "docs": len(examples), "limit": limit,
        "command": "python benchmarks/shared_diagnostics.py " + " ".join(sys.argv[1:]),
        "heads": {name: {"classes": len(head.class_names)} for name, head in shared_heads(nlp) or []},
        "temperatures": early_exit_pipes(nlp)[0][1].temperatures,
        **found,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"shared_diagnostics_{dataset}_{split}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(format_report(report))
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
