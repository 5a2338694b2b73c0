"""The registered Thinc architecture: docs in, per-token early-exit predictions out.

`spacy-early-exit.EarlyExitTransformer.v1` is a Thinc model with one child, a
PyTorchWrapper-style "pytorch" layer whose shim owns the torch
:class:`EarlyExitEncoder`. The outer layer does the spaCy-side work around
it: wordpiece alignment, long-document windows, length-sorted sub-batches, and
mapping rows back to tokens.
"""
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, Model, torch2xp, xp2torch
from thinc.layers.pytorchwrapper import forward as pytorch_forward

from ..encoder.exits import ExitPolicy
from ..encoder.model import EncoderCall, EncoderInput, EncoderOutput
from . import sub_batches
from .alignment import Aligner, DocLayout, SequenceRow, collate
from .shim import EarlyExitShim
from .types import DocPrediction, ModelInput, TrainingOutput


class _RowResult(NamedTuple):
    """One row's prediction: per-word logits and exit layers, FLOPs spent and
    at full depth, and per-word states when asked."""

    logits: numpy.ndarray
    exit_layers: numpy.ndarray
    flops: int
    full_flops: int
    states: Optional[numpy.ndarray] = None


@registry.architectures("spacy-early-exit.EarlyExitTransformer.v1")
def build_early_exit_transformer(
    name: str,
    max_length: Optional[int] = None,
    ramp_dropout: float = 0.1,
    batch_pieces: int = 8192,
    pretokenized: bool = False,
) -> Model[ModelInput, List[DocPrediction]]:
    """Build the early-exit encoder model (weights load at initialize).

    name (str): backbone: Hugging Face id, local directory, or ``pkg:<module>``.
    max_length (Optional[int]): longest encoder row in wordpieces, specials
        included; None = the backbone's position limit. Longer docs are windowed.
    ramp_dropout (float): dropout before each off-ramp during training.
    batch_pieces (int): at inference, the most padded wordpieces in one forward
        pass; rows are sorted by length and cut into sub-batches that trade
        padding against passes (`sub_batches.py`) within this budget.
    pretokenized (bool): tokenize each spaCy token on its own (no wordpiece
        spans two tokens); for character-level tasks such as Chinese.
    """
    if max_length is not None and (not isinstance(max_length, int) or max_length < 4):
        raise ValueError(f"'max_length' must be an integer >= 4 or null; got {max_length!r}")
    if not 0.0 <= ramp_dropout < 1.0:
        raise ValueError(f"'ramp_dropout' must be in [0, 1); got {ramp_dropout!r}")
    if batch_pieces < 1:
        raise ValueError(f"'batch_pieces' must be positive; got {batch_pieces!r}")
    torch_layer: Model = Model(
        "pytorch",
        pytorch_forward,
        attrs={"convert_inputs": _convert_inputs, "convert_outputs": _convert_outputs},
        shims=[EarlyExitShim()],
    )
    return Model(
        "early_exit_transformer",
        forward,
        init=init,
        layers=[torch_layer],
        attrs={
            "name": name,
            "max_length": max_length,
            "ramp_dropout": ramp_dropout,
            "batch_pieces": batch_pieces,
            "pretokenized": pretokenized,
            "n_classes": None,
            # spaCy's nlp.replace_listeners calls this first (functions are
            # left out when the model is saved).
            "replace_listener_cfg": _refuse_replace_listeners,
        },
    )


def _refuse_replace_listeners(encoder_config: Any, listener_config: Any) -> Any:
    raise ValueError(
        "nlp.replace_listeners does not work with a tokee_transformer: its listeners share one early-exit "
        "encoder whose exits all its heads decide together. For a component with an encoder of its own, "
        "use a standalone tokee_ner / tokee_tagger / tokee_segmenter"
    )


def get_shim(model: Model) -> EarlyExitShim:
    """The shim that owns the torch encoder and its tokenizer."""
    return model.layers[0].shims[0]


def init(model: Model, X: Any = None, Y: Any = None) -> None:
    # A shared encoder (tokee_transformer) starts with no heads: each
    # listening component adds its off-ramps once it knows its labels.
    head_sizes = model.attrs.get("head_sizes")
    if head_sizes is None:
        n_classes = model.attrs["n_classes"]
        if not n_classes:
            raise ValueError("Set model.attrs['n_classes'] (the component does) before initializing")
        head_sizes = [n_classes]
    get_shim(model).build(model.attrs["name"], list(head_sizes), model.attrs["ramp_dropout"])


def get_aligner(model: Model) -> Aligner:
    """The layer's aligner (built once by the shim, for this layer's settings)."""
    return get_shim(model).aligner(model.attrs["max_length"], model.attrs.get("pretokenized", False))


def forward(model: Model, inputs: ModelInput, is_train: bool) -> Tuple[Any, Callable]:
    docs, policy, planner, word_states = ModelInput(*inputs)
    aligner = get_aligner(model)
    rows, layouts = aligner.layout(docs)
    pad_id = aligner.pad_id
    torch_layer = model.layers[0]
    if is_train:
        return _all_layers_forward(
            torch_layer, rows, layouts, pad_id, is_train=True, planner=planner, word_states=word_states
        )
    outputs = _predict_rows(torch_layer, rows, pad_id, policy, model.attrs["batch_pieces"], word_states)
    encoder = get_shim(model).encoder
    width = encoder.spec.hidden_size if word_states else 0
    return [_doc_prediction(doc, lay, outputs, encoder.n_classes, width) for doc, lay in zip(docs, layouts)], _no_backprop


def _no_backprop(d_output: Any) -> None:
    raise ValueError("Prediction output has no backward pass")


def full_depth_logits(model: Model, docs: Sequence[Doc], precision: str = "fp32") -> TrainingOutput:
    """Every off-ramp's logits at full depth, in inference mode (no dropout, no
    gradients): what calibration and exit simulations read.

    precision (str): the layer stack's precision ("fp32", "bf16", "int8", "int8-ort", "fp32-ort"), so
        that temperatures and thresholds can be fitted for the one that runs.
    """
    aligner = get_aligner(model)
    rows, layouts = aligner.layout(docs)
    pad_id = aligner.pad_id
    output, _ = _all_layers_forward(model.layers[0], rows, layouts, pad_id, is_train=False, precision=precision)
    return output


def _all_layers_forward(
    torch_layer: Model,
    rows: List[SequenceRow],
    layouts: List[DocLayout],
    pad_id: int,
    is_train: bool,
    planner: Optional[Callable[[EncoderInput], Any]] = None,
    precision: str = "fp32",
    word_states: bool = False,
) -> Tuple[TrainingOutput, Callable]:
    word_counts = numpy.asarray([len(r.word_cols) for r in rows], dtype="int64")
    row_offsets = numpy.concatenate([[0], numpy.cumsum(word_counts)])
    token_index = []
    for layout in layouts:
        index = numpy.full(len(layout.token_rows), -1, dtype="int64")
        scored = layout.token_rows >= 0
        index[scored] = row_offsets[layout.token_rows[scored]] + layout.token_slots[scored]
        token_index.append(index)
    if not rows:
        empty = torch_layer.ops.alloc3f(0, 0, 0)
        states = torch_layer.ops.alloc2f(0, 0) if word_states else None
        return TrainingOutput(empty, token_index, word_states=states), lambda d: None
    batch = collate(rows, pad_id, torch_layer.shims[0].device)
    if planner is None:
        # Training always runs the fp32 layers; the precision is for inference.
        policy = ExitPolicy(mode="off", precision=precision) if precision != "fp32" else None
        call = EncoderCall(batch, policy, all_layers=True, word_states=word_states)
        layer_logits, states, backprop = _run_all_layers(torch_layer, call, is_train)
        return TrainingOutput(layer_logits, token_index, word_states=states), backprop
    plan = planner(batch)
    call = EncoderCall(batch, all_layers=True, exit_layers=plan.exit_layers, word_states=word_states)
    layer_logits, states, backprop = _run_all_layers(torch_layer, call, is_train)
    mask = batch.word_mask
    reference = plan.reference_logits
    return TrainingOutput(
        layer_logits,
        token_index,
        reference_logits=reference.float().cpu().numpy() if reference is not None else None,
        exit_layers=plan.exit_layers[mask].cpu().numpy(),
        word_states=states,
    ), backprop


def _run_all_layers(torch_layer: Model, call: EncoderCall, is_train: bool) -> Tuple[Any, Any, Callable]:
    """A training pass: every off-ramp's logits, the word states if asked, and
    a backprop that takes ``d_layer_logits`` (or ``(d_layer_logits,
    d_word_states)`` when the states were asked for)."""
    (layer_logits, states), torch_backprop = torch_layer(call, is_train=is_train)
    if call.word_states:
        return layer_logits, states, torch_backprop
    return layer_logits, None, lambda d_logits: torch_backprop((d_logits, None))


def _predict_rows(
    torch_layer: Model,
    rows: List[SequenceRow],
    pad_id: int,
    policy: Optional[ExitPolicy],
    batch_pieces: int,
    word_states: bool = False,
) -> List[_RowResult]:
    """Run rows in length-sorted sub-batches (`sub_batches.length_sub_batches`);
    RETURNS one result per row, in row order."""
    if len(rows) == 1 and not word_states:
        # A sentence at batch size 1: straight to the one-call graph where it applies.
        found = torch_layer.shims[0].predict_sequence(rows[0], policy)
        if found is not None:
            return [_RowResult(*found)]
    results: List[Any] = [None] * len(rows)
    for chunk in sub_batches.length_sub_batches([len(row.ids) for row in rows], batch_pieces):
        batch = collate([rows[i] for i in chunk], pad_id)
        out: EncoderOutput = torch_layer.predict(EncoderCall(batch, policy, word_states=word_states))
        logits = out.logits.float().cpu().numpy()
        exits = out.exit_layers.cpu().numpy()
        flops = out.flops.tolist()
        full = out.full_flops.tolist()
        # word_states are row-major over the real words: row j's are the next n.
        states = out.word_states.float().cpu().numpy() if out.word_states is not None else None
        offset = 0
        for j, i in enumerate(chunk):
            n = len(rows[i].word_cols)
            row_states = states[offset:offset + n] if states is not None else None
            offset += n
            results[i] = _RowResult(logits[j, :n], exits[j, :n], flops[j], full[j], row_states)
    return results


def _doc_prediction(
    doc: Doc, layout: DocLayout, outputs: List[_RowResult], n_classes: int, width: int = 0
) -> DocPrediction:
    """One doc's prediction from its rows (several for a windowed long doc).

    width (int): the hidden width when states were asked for; 0 = none.
    """
    n_tokens = len(doc)
    logits = numpy.zeros((n_tokens, n_classes), dtype="float32")
    exit_layers = numpy.zeros(n_tokens, dtype="int64")
    states = numpy.zeros((n_tokens, width), dtype="float32") if width else None
    for row in layout.rows:
        owned = numpy.flatnonzero(layout.token_rows == row)
        slots = layout.token_slots[owned]
        logits[owned] = outputs[row].logits[slots]
        exit_layers[owned] = outputs[row].exit_layers[slots]
        if states is not None:
            states[owned] = outputs[row].states[slots]
    flops = sum(outputs[row].flops for row in layout.rows)
    full = sum(outputs[row].full_flops for row in layout.rows)
    return DocPrediction(logits, exit_layers, int(flops), int(full), states)


def _convert_inputs(model: Model, call: EncoderCall, is_train: bool):
    batch = call.batch
    device = model.shims[0].device
    if batch.input_ids.device != device:
        batch = EncoderInput(*(t.to(device) for t in vars(batch).values()))
    kwargs = {
        "policy": call.policy, "all_layers": call.all_layers,
        "exit_layers": call.exit_layers, "word_states": call.word_states,
    }
    return ArgsKwargs(args=(batch,), kwargs=kwargs), lambda d: None


def _convert_outputs(model: Model, inputs_outputs: Tuple[EncoderCall, EncoderOutput], is_train: bool):
    call, output = inputs_outputs
    if not call.all_layers:
        return output, lambda d: None
    stacked = torch.stack(output.layer_logits)
    states = output.word_states

    def to_torch(d: Any, like: torch.Tensor) -> torch.Tensor:
        return xp2torch(model.ops.asarray(d), device=like.device).to(like.dtype)

    def backprop(d_output: Any) -> ArgsKwargs:
        d_logits, d_states = d_output
        if states is None:
            return ArgsKwargs(args=(stacked,), kwargs={"grad_tensors": (to_torch(d_logits, stacked),)})
        tensors = (stacked, states)
        return ArgsKwargs(args=(tensors,), kwargs={"grad_tensors": (to_torch(d_logits, stacked), to_torch(d_states, states))})

    word_states = torch2xp(states.detach()) if states is not None else None
    return (torch2xp(stacked.detach()), word_states), backprop
