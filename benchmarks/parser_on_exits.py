"""spaCy's parser on the shared early-exit encoder: what the exits do to LAS.

One `tokee_transformer` with a listening UPOS `tokee_tagger` (its off-ramps
decide when a token exits) and spaCy's own `parser`, whose `tok2vec` is
`spacy-early-exit.EarlyExitTok2VecListener.v1`: each token's hidden state at
its exit layer. Trained jointly on UD English-EWT: stage 1 with
`python -m spacy train` (the parser reads the last layer's states), then
stage 2 (self-sampled exits, so the parser also learns from the states tokens
leave with), calibrated and tuned for the tagger as usual; then
every setting (full depth, TOKEE tuned for each target, static cuts) is scored
on test for LAS/UAS and UPOS. The parser is never consulted about the exits:
this shows what a parser pays for features taken at the tagger's exit layer.

    python benchmarks/parser_on_exits.py convert project/corpus/ud_en_ewt_parse
    python benchmarks/parser_on_exits.py config OUT.cfg
    python benchmarks/parser_on_exits.py stage2 STAGE1_PIPELINE CORPUS OUT
    python benchmarks/parser_on_exits.py score PIPELINE TEST --tuned TUNE_JSON
    bash benchmarks/train_parser_on_exits.sh        # all of it, in order

Writes benchmarks/results/parser_on_exits.json (and .md).
"""
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from thinc.api import Config

ROOT = Path(__file__).resolve().parent.parent
SHARED_CONFIG = ROOT / "project" / "configs" / "shared.cfg"
UD_EWT = ROOT.parent / "shared" / "data" / "ud_en_ewt"
RESULTS = ROOT / "benchmarks" / "results"
FEATURES = {"@architectures": "spacy-early-exit.EarlyExitTok2VecListener.v1", "upstream": "tokee_transformer"}
METRICS = ("dep_las", "dep_uas", "pos_acc")

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def parser_config() -> Config:
    """The project's two-head config (configs/shared.cfg) with spaCy's parser
    in place of the NER head: tokee_transformer + UPOS tokee_tagger + parser."""
    config = Config().from_disk(SHARED_CONFIG, interpolate=False)
    components = config["components"]
    components.pop("tokee_ner")
    # spaCy's transformer parser settings (en_core_web_trf's: 128 hidden, 3
    # maxout pieces, no upper layer), reading the early-exit features.
    components["parser"] = {
        "factory": "parser",
        "learn_tokens": False,
        "min_action_freq": 30,
        "moves": None,
        "update_with_oracle_cut_size": 100,
        "scorer": {"@scorers": "spacy.parser_scorer.v1"},
        "model": {
            "@architectures": "spacy.TransitionBasedParser.v2",
            "state_type": "parser",
            "extra_state_tokens": False,
            "hidden_width": 128,
            "maxout_pieces": 3,
            "use_upper": False,
            "nO": None,
            "tok2vec": dict(FEATURES),
        },
    }
    config["nlp"]["pipeline"] = ["tokee_transformer", "tokee_tagger", "parser"]
    config["initialize"]["components"].pop("tokee_ner", None)
    config["training"]["score_weights"] = {"dep_las": 0.5, "dep_uas": 0.0, "pos_acc": 0.5, "sents_f": 0.0}
    return config


@app.command("config")
def write_config(output: Path = typer.Argument(..., help="Where to write the training config")) -> None:
    """Write the stage-1 training config (project/configs/shared.cfg with the parser in place of NER)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    parser_config().to_disk(output)
    typer.echo(f"[parser-on-exits] config -> {output}")


@app.command("stage2")
def stage_two(
    stage1: Path = typer.Argument(..., help="The stage-1 pipeline"),
    corpus: Path = typer.Argument(..., help="Corpus folder with train.spacy and dev.spacy"),
    output: Path = typer.Argument(..., help="Output folder (model-best, model-last)"),
    max_steps: int = typer.Option(1000, help="Updates"),
    eval_frequency: int = typer.Option(500, help="Evaluate on dev every N updates"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """Stage 2 (self-sampling) of the whole pipeline, parser included.

    spaCy's training loop on the loaded stage-1 pipeline, so every component
    keeps its weights. (`spacy train` would initialize the parser afresh,
    and sourcing it instead leaves it unlinked: spaCy relinks listeners
    while sourced components are disabled.) Dev is scored at full depth.
    """
    import spacy
    import torch
    from spacy.training.loop import train

    torch.set_num_threads(threads)
    overrides = {
        "paths.train": str(corpus / "train.spacy"), "paths.dev": str(corpus / "dev.spacy"),
        # Also where a saved config has the paths filled in rather than ${paths.*}.
        "corpora.train.path": str(corpus / "train.spacy"), "corpora.dev.path": str(corpus / "dev.spacy"),
        "components.tokee_transformer.training.mode": "self_sampling",
        "components.tokee_transformer.exit_mode": "off",
        "training.max_steps": max_steps, "training.eval_frequency": eval_frequency,
        "training.optimizer.learn_rate.warmup_steps": max(1, max_steps // 20),
    }
    nlp = spacy.load(stage1, config=overrides)
    output.mkdir(parents=True, exist_ok=True)
    train(nlp, output)


@app.command("convert")
def convert(
    output: Path = typer.Argument(..., help="Corpus folder: train/dev/test.spacy"),
    data_dir: Path = typer.Option(UD_EWT, help="The UD English-EWT .conllu files"),
) -> None:
    """UD English-EWT with spaCy's own CoNLL-U converter (heads, deps, UPOS, one sentence per doc)."""
    from spacy.tokens import DocBin
    from spacy.training.converters import conllu_to_docs

    output.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        source = data_dir / f"en_ewt-ud-{split}.conllu"
        if not source.exists():
            raise typer.BadParameter(f"No {source}: pass --data-dir with en_ewt-ud-{{train,dev,test}}.conllu")
        docs = list(conllu_to_docs(source.read_text(encoding="utf8"), n_sents=1, no_print=True))
        DocBin(docs=docs, store_user_data=False).to_disk(output / f"{split}.spacy")
        typer.echo(f"[parser-on-exits] {split}: {len(docs)} sentences, {sum(len(d) for d in docs)} words -> {output}")
    meta = {"dataset": "ud_en_ewt", "task": "tagger,parser", "lang": "en", "attribute": "pos",
            "metrics": {"tagger": "pos_acc", "parser": "dep_las"}, "converter": "spacy.training.converters.conllu_to_docs"}
    (output / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf8")


def settings(tuned: Optional[Path], num_layers: int, static: List[int]) -> List[Dict[str, Any]]:
    """Full depth, each reachable tuned target, and the static cuts asked for."""
    from spacy_early_exit.tools.evaluation_rows import static_fields

    rows: List[Dict[str, Any]] = [{"setting": "full", "target": 1, "fields": {"exit_mode": "off"}}]
    if tuned is not None:
        for target in json.loads(tuned.read_text(encoding="utf8"))["targets"]:
            if target.get("reachable", True):
                rows.append({"setting": f"tokee-{target['target']:g}x", "target": target["target"], "fields": target["fields"]})
    for layer in static:
        if not 1 <= layer < num_layers:
            raise typer.BadParameter(f"static cut {layer} is not between 1 and {num_layers - 1}")
        rows.append({"setting": f"static-{layer}", "target": None, "fields": static_fields(layer, num_layers)})
    return rows


@app.command("score")
def score_settings(
    pipeline: Path = typer.Argument(..., help="The trained, calibrated pipeline"),
    test: Path = typer.Argument(..., help="Test .spacy with heads, deps and UPOS"),
    tuned: Optional[Path] = typer.Option(None, help="tune.json of the pipeline: its targets' exit fields"),
    static: str = typer.Option("2,3", help="Static cuts (exit after layer k), comma-separated"),
    limit: int = typer.Option(0, help="Score the first N test docs only (0 = all)"),
    threads: int = typer.Option(1, help="torch threads"),
    output: Path = typer.Option(RESULTS / "parser_on_exits.json", help="Results JSON (a .md table beside it)"),
) -> None:
    """Score every setting on test: LAS, UAS, UPOS accuracy and FLOPs speed-up."""
    import spacy
    import torch
    from spacy_early_exit.tools.data import load_examples
    from spacy_early_exit.tools.evaluate import exit_settings, score

    torch.set_num_threads(threads)
    nlp = spacy.load(pipeline)
    examples = load_examples(nlp, test, limit=limit)
    num_layers = nlp.get_pipe("tokee_transformer").num_layers
    rows = []
    for row in settings(tuned, num_layers, [int(k) for k in static.split(",") if k.strip()]):
        with exit_settings(nlp, row["fields"]):
            scores, cost = score(nlp, examples)
        row.update({m: round(100 * float(scores[m]), 2) for m in METRICS},
                   flops_speedup=round(cost["flops_speedup"], 3), mean_exit_layer=round(cost["mean_exit_layer"], 3))
        typer.echo(f"[parser-on-exits] {row['setting']}: LAS {row['dep_las']} UAS {row['dep_uas']} "
                   f"UPOS {row['pos_acc']} at {row['flops_speedup']}x FLOPs")
        rows.append(row)
    full = rows[0]
    for row in rows:
        row["las_loss"] = round(full["dep_las"] - row["dep_las"], 2)
        row["pos_loss"] = round(full["pos_acc"] - row["pos_acc"], 2)
    report = {
        "pipeline": str(pipeline), "test": str(test), "n_docs": len(examples), "tuned": str(tuned) if tuned else None,
        "rows": rows, "threads": threads, "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "note": "FLOPs: encoder layers and the tagger's off-ramps (the shared record); the parser's own layers are not counted",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    lines = ["| setting | LAS | UAS | UPOS | FLOPs x |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['dep_las']:.2f} | {r['dep_uas']:.2f} | {r['pos_acc']:.2f} | {r['flops_speedup']:.2f} |" for r in rows]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf8")
    typer.echo(f"[parser-on-exits] -> {output}")


if __name__ == "__main__":
    app()
