"""EarlyExitEncoder: a BERT-family backbone with an off-ramp after every layer.

Input is a padded batch of wordpiece sequences plus, per sequence, the first
wordpiece of each word and which pieces belong to which word. Output is, per
word, the logits of the off-ramp at which it exited, the exit layer, and the
FLOPs spent on each sequence. Plain PyTorch: nothing here knows about spaCy.

Several task heads can share the encoder: each layer has one fused off-ramp
whose output columns are the heads' classes side by side (`head_sizes`), and
a token exits when every head is confident (`exits.joint_uncertainty`). A
single-task encoder is the one-head case of the same code.
"""
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .backbone import BackboneSpec, backbone_spec, embed, layer_parts
from .cost import CostModel
from .exits import ExitPolicy, exit_decisions, joint_uncertainty
from .layer_step import halt_and_copy_layer
from .document_pass import DocumentCache, one_call_products
from .precision import LayerStack, PrecisionCache
from .schedule import LayerSchedule, PieceOwners, WordIndex


@dataclass
class EncoderInput:
    """A padded batch of wordpiece sequences.

    input_ids (torch.Tensor): long ``[batch, seq]``, right-padded.
    lengths (torch.Tensor): long ``[batch]``, real pieces per row (specials included).
    word_pieces (torch.Tensor): long ``[batch, words]``, the column of each
        word's first piece; -1 pads rows with fewer words.
    piece_rows, piece_cols, piece_words (torch.Tensor): long ``[n_pairs]``;
        wordpiece (row, col) belongs to word (row, piece_words). A piece shared
        by two words appears twice. Pieces in no pair (specials) stay active
        while any word of their row is.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    word_pieces: torch.Tensor
    piece_rows: torch.Tensor
    piece_cols: torch.Tensor
    piece_words: torch.Tensor

    @property
    def word_mask(self) -> torch.Tensor:
        return self.word_pieces >= 0


@dataclass(frozen=True)
class EncoderCall:
    """One forward pass asked of the encoder: what the Thinc layer hands over.

    batch (EncoderInput): the padded rows.
    policy (Optional[ExitPolicy]): exit settings; None = full depth.
    all_layers (bool): return every off-ramp's logits (a training pass).
    exit_layers (Optional[torch.Tensor]): stage 2's forced exit layers, long
        ``[batch, words]``; needs `all_layers`.
    word_states (bool): also return each word's hidden state at its exit
        layer (for listeners that read features, not off-ramps).
    """

    batch: EncoderInput
    policy: Optional[ExitPolicy] = None
    all_layers: bool = False
    exit_layers: Optional[torch.Tensor] = None
    word_states: bool = False


@dataclass
class EncoderOutput:
    """Per-word results of one forward pass.

    logits (torch.Tensor): ``[batch, words, labels]`` at each word's exit layer
        (every head's columns, read at the joint exit layer).
    exit_layers (torch.Tensor): long ``[batch, words]``, 1-based, 0 on padding.
    flops, full_flops (torch.Tensor): long ``[batch]`` per sequence.
    layer_logits (Optional[List[torch.Tensor]]): training only: for every
        layer, ``[n_words, labels]`` over the real words in row-major order.
    word_states (Optional[torch.Tensor]): when asked, ``[n_words, width]``
        over the real words in row-major order: each word's first piece's
        hidden state at the word's exit layer (halted pieces are copied up
        unchanged, so the last grid holds it), in the off-ramps' dtype.
    """

    logits: torch.Tensor
    exit_layers: torch.Tensor
    flops: torch.Tensor
    full_flops: torch.Tensor
    layer_logits: Optional[List[torch.Tensor]] = None
    word_states: Optional[torch.Tensor] = None


class EarlyExitEncoder(nn.Module):
    """backbone (nn.Module): a transformers base model; n_classes (Optional[int]):
    off-ramp output size of a single-task encoder; ramp_dropout (float): dropout
    before each off-ramp; head_sizes (Optional[Sequence[int]]): instead of
    `n_classes`, the class count of each head sharing the encoder (may be
    empty until the heads are added with `set_head`)."""

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: Optional[int] = None,
        ramp_dropout: float = 0.1,
        head_sizes: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if (n_classes is None) == (head_sizes is None):
            raise ValueError("Give an early-exit encoder either n_classes or head_sizes")
        sizes = (n_classes,) if head_sizes is None else tuple(head_sizes)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(f"An early-exit encoder needs at least one label per head; got {sizes}")
        self.backbone = backbone
        self.layers = layer_parts(backbone)
        self.spec: BackboneSpec = backbone_spec(backbone)
        self.head_sizes: Tuple[int, ...] = sizes
        self.ramps = nn.ModuleList(
            nn.Sequential(nn.Dropout(ramp_dropout), _linear(self.spec.hidden_size, sum(sizes)))
            for _ in self.layers
        )
        self.cost = CostModel(self.spec.hidden_size, self.spec.intermediate_size, sum(sizes))
        # Reduced-precision copies of `layers` for prediction: a plain object,
        # not a submodule, so no state_dict (and no saved file) ever holds one.
        self.precision_cache = PrecisionCache()
        # "int8-ort" and "fp32-ort" run a single sequence's whole exit loop as one call
        # (ort_document.py); False runs every sequence through the eager loop.
        self.one_call_documents = True
        self.document_cache = DocumentCache()
        # Bumped on every weights change (the shim's finish_update, and any
        # load_state_dict), so the cached copies are made again.
        self.weights_version = 0
        self.register_load_state_dict_post_hook(_weights_loaded)

    @property
    def n_classes(self) -> int:
        """The fused off-ramps' width: every head's classes."""
        return sum(self.head_sizes)

    @property
    def n_heads(self) -> int:
        return len(self.head_sizes)

    def head_columns(self, index: int) -> Tuple[int, int]:
        """The (start, stop) columns of head `index` in the fused off-ramps."""
        start = sum(self.head_sizes[:index])
        return start, start + self.head_sizes[index]

    def set_head(self, index: int, n_classes: int) -> None:
        """Give head `index` fresh off-ramp rows for `n_classes` classes; every
        other head's rows keep their weights. `index == n_heads` adds a head.
        (Heads join one by one as the components sharing the encoder learn
        their labels.)"""
        if not 0 <= index <= self.n_heads:
            raise ValueError(f"head index {index} out of range for {self.n_heads} heads")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"A head needs at least one class; got {n_classes!r}")
        self._splice(index, n_classes)

    def remove_head(self, index: int) -> None:
        """Drop head `index`'s off-ramp rows (the later heads move up)."""
        if not 0 <= index < self.n_heads:
            raise ValueError(f"head index {index} out of range for {self.n_heads} heads")
        self._splice(index, 0)

    def _splice(self, index: int, n_new: int) -> None:
        """Replace head `index`'s rows by `n_new` fresh ones (0 removes the head)."""
        sizes = list(self.head_sizes)
        start = sum(sizes[:index])
        stop = start + (sizes[index] if index < len(sizes) else 0)
        for ramp in self.ramps:
            old: nn.Linear = ramp[1]
            fresh = _linear(self.spec.hidden_size, n_new).to(old.weight.device, old.weight.dtype)
            new = _linear(self.spec.hidden_size, old.out_features - (stop - start) + n_new)
            new = new.to(old.weight.device, old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(torch.cat([old.weight[:start], fresh.weight, old.weight[stop:]]))
                new.bias.copy_(torch.cat([old.bias[:start], fresh.bias, old.bias[stop:]]))
            ramp[1] = new
        sizes[index:index + 1] = [n_new] if n_new else []
        self.head_sizes = tuple(sizes)
        self.cost = CostModel(self.spec.hidden_size, self.spec.intermediate_size, sum(sizes))
        self.weights_changed()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def weights_changed(self) -> None:
        """Mark the weights as changed: reduced-precision copies are made anew.
        Code that edits parameters other than through the shim's update or
        `load_state_dict` must call this."""
        self.weights_version += 1

    def layer_stack(self, precision: str = "fp32") -> LayerStack:
        """The layers to run at `precision`: the fp32 originals in training
        mode or at "fp32", else this process's cached converted copy."""
        if self.training:
            return LayerStack(tuple(self.layers))
        return self.precision_cache.stack(self.layers, precision, self.weights_version, self.spec.num_heads)

    def checked_policy(self, policy: Optional[ExitPolicy]) -> ExitPolicy:
        """`policy` (None: full depth), failing where it does not fit this encoder."""
        policy = policy or ExitPolicy(mode="off")
        policy.check_depth(self.num_layers)
        policy.check_heads(self.n_heads)
        if not self.head_sizes:
            raise ValueError("The early-exit encoder has no heads yet: no component has added its off-ramps")
        return policy

    def forward(
        self,
        batch: EncoderInput,
        policy: Optional[ExitPolicy] = None,
        all_layers: bool = False,
        exit_layers: Optional[torch.Tensor] = None,
        stack: Optional[LayerStack] = None,
        word_states: bool = False,
    ) -> EncoderOutput:
        """Run the batch.

        policy (Optional[ExitPolicy]): exit settings; None or mode "off" = full depth.
        all_layers (bool): return every off-ramp's logits for every word (the
            training pass; stage 1 runs every layer for every piece).
        exit_layers (Optional[torch.Tensor]): long ``[batch, words]``, forced
            exit layers (stage 2): each word halts after its layer, is copied
            upwards, and every off-ramp reads its (copied) state.
        stack (Optional[LayerStack]): the layers to run; None = those of
            `policy.precision` (see `layer_stack`). The hidden states take the
            stack's dtype inside it and the embeddings' dtype again before
            every off-ramp, so uncertainties and FLOPs mean the same in every
            precision (FLOPs are counted from the schedule, not measured).
        word_states (bool): also return every word's hidden state at its exit
            layer (`EncoderOutput.word_states`).
        """
        if exit_layers is not None and not all_layers:
            raise ValueError("Forced exit layers are a training pass: pass all_layers=True")
        policy = self.checked_policy(policy)
        exits_on = policy.mode != "off" and not all_layers
        stack = stack if stack is not None else self.layer_stack(policy.precision)
        ids = batch.input_ids
        n_rows, seq = ids.shape
        single = n_rows == 1 and not (all_layers or word_states or exit_layers is not None)
        products = one_call_products(self, stack.precision) if single else None
        if products is not None:
            found = self.document_cache.run(self, batch, policy, exits_on, products)
            if found is not None:
                return EncoderOutput(*found)
        device = ids.device
        real = torch.arange(seq, device=device)[None, :] < batch.lengths[:, None]
        word_mask = batch.word_mask
        first_pieces = batch.word_pieces.clamp(min=0)
        owners = PieceOwners(batch.piece_rows, batch.piece_cols, batch.piece_words, real, word_mask.shape[1])

        # The embedding block applies its own dropout in training mode.
        hidden = embed(self.backbone, ids, torch.zeros_like(ids))
        width = hidden.shape[-1]
        train_dropout = self.spec.hidden_dropout if self.training else 0.0
        attn_dropout = self.spec.attention_dropout if self.training else 0.0
        ramp_dtype = hidden.dtype

        word_active = word_mask
        # Stage 2 scores every word at every layer, whatever its exit layer.
        all_words = WordIndex.build(word_mask, first_pieces, seq) if exit_layers is not None else None
        exits = torch.zeros(word_mask.shape, dtype=torch.long, device=device)
        logits_out = hidden.new_zeros(*word_mask.shape, self.n_classes)
        # FLOPs per row, counted on the host from the schedules' sizes: at
        # batch size 1 the same sums as tensor ops cost more than a ramp.
        spent = [0] * n_rows
        layer_logits: List[torch.Tensor] = []
        schedule: Optional[LayerSchedule] = None  # rebuilt only when words exit
        last = self.num_layers
        if stack.dtype is not None:
            hidden = hidden.to(stack.dtype)
        for layer, parts in enumerate(stack.parts, start=1):
            if exit_layers is not None:
                word_active = word_mask & (exit_layers >= layer)
                schedule = None
            if schedule is None:
                schedule = LayerSchedule.build(owners, word_active, first_pieces)
                if exits_on and layer > 1 and schedule.empty:
                    break
            sizes = zip(spent, schedule.present_sizes, schedule.active.sizes)
            spent = [f + self.cost.layer_flops(p, a) for f, p, a in sizes]
            hidden = halt_and_copy_layer(
                parts, hidden, schedule.present, schedule.active,
                self.spec.num_heads, train_dropout, attn_dropout, schedule.present_sizes,
            )
            if not (all_layers or layer == last):
                # An off-ramp is only worth running where a token may leave:
                # a threshold of 0 lets nobody out (static baselines, "off").
                if not exits_on or policy.layer_threshold(layer) <= 0.0:
                    continue
            scored = all_words if all_words is not None else schedule.words
            states = hidden.reshape(-1, width).index_select(0, scored.pieces).to(ramp_dtype)
            logits = self.ramps[layer - 1](states)
            spent = [f + self.cost.ramp_flops(n) for f, n in zip(spent, scored.sizes)]
            logits_out = logits_out.index_put((scored.rows, scored.cols), logits)
            if all_layers:
                layer_logits.append(logits)
            if layer == last or not exits_on:
                continue
            temperatures = policy.layer_temperatures(layer, self.n_heads)
            uncertainty = logits.new_zeros(word_mask.shape).index_put(
                (scored.rows, scored.cols), joint_uncertainty(logits.detach(), self.head_sizes, temperatures)
            )
            leaving = exit_decisions(uncertainty, word_active, policy, layer)
            if bool(leaving.any()):
                exits = exits.masked_fill(leaving, layer)
                word_active = word_active & ~leaving
                schedule = None
        if exit_layers is not None:
            exits = exit_layers.masked_fill(~word_mask, 0)
        else:
            exits = exits.masked_fill(word_active, last)
        states_out = None
        if word_states:
            words = all_words if all_words is not None else WordIndex.build(word_mask, first_pieces, seq)
            states_out = hidden.reshape(-1, width).index_select(0, words.pieces).to(ramp_dtype)
        lengths, n_words = torch.stack((batch.lengths, word_mask.sum(dim=1))).tolist()
        full = [last * self.cost.layer_flops(n, n) + self.cost.ramp_flops(w) for n, w in zip(lengths, n_words)]
        return EncoderOutput(
            logits=logits_out,
            exit_layers=exits,
            flops=torch.tensor(spent, dtype=torch.long, device=device),
            full_flops=torch.tensor(full, dtype=torch.long, device=device),
            layer_logits=layer_logits if all_layers else None,
            word_states=states_out,
        )


def _linear(width: int, n_out: int) -> nn.Linear:
    """An off-ramp Linear; a head-less encoder's has zero outputs."""
    with warnings.catch_warnings():
        # torch warns that initializing a zero-element tensor is a no-op: it is.
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(width, n_out)


def _weights_loaded(module: EarlyExitEncoder, incompatible_keys: Any) -> None:
    # A module-level function, so the hook survives a pickle of the encoder.
    module.weights_changed()
