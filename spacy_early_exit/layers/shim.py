"""The Thinc shim that owns the torch encoder and its tokenizer.

A pipeline must load without the model source it was trained from, so the shim
serializes the backbone's config, the tokenizer files and the weights; loading
rebuilds the encoder from those alone. The shim also applies the component's
own learning rates (off-ramps, and a lower rate for the backbone) on top of
whatever optimizer spaCy passes in.
"""
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import srsly
import torch
from thinc.api import Optimizer, PyTorchShim, torch2xp, xp2torch
from torch import nn

from ..encoder.backbone import backbone_spec, build_from_config, check_tokenizer, load_pretrained
from ..encoder.document_pass import predict_sequence
from ..encoder.exits import ExitPolicy
from ..encoder.model import EarlyExitEncoder
from .alignment import Aligner, SequenceRow
from ..memory import native_kernels

RAMP_PREFIX = "encoder.ramps."
# What torch names in its refusal of a pickled object: "GLOBAL posix.system"
# (torch >= 2.4) or "Unsupported class posix.system" (2.1-2.3).
_REFUSED_NAME = re.compile(r"(?:GLOBAL|class)\s+([\w.]+)")
PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"
_saved_parallelism: List[Optional[str]] = []


def _before_fork() -> None:
    # A forked child (spaCy's nlp.pipe(n_process=...) forks on Linux) has
    # none of the parent's threads: the tokenizers' Rust pool and torch's
    # OpenMP pool would deadlock there. The child tokenizes serially, and
    # setting the variable before the fork also silences tokenizers' warning.
    _saved_parallelism.append(os.environ.get(PARALLELISM_ENV))
    os.environ[PARALLELISM_ENV] = "false"


def _after_fork_in_parent() -> None:
    saved = _saved_parallelism.pop() if _saved_parallelism else None
    if saved is None:
        os.environ.pop(PARALLELISM_ENV, None)
    else:
        os.environ[PARALLELISM_ENV] = saved


def _after_fork_in_child() -> None:
    _saved_parallelism.clear()
    # One intra-op thread per worker: libgomp's pool does not survive a fork
    # (the first parallel op hangs), and n workers x n threads oversubscribe.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # not on Windows, which spawns
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class UnsafeWeightsError(ValueError):
    """Saved encoder weights that hold a pickled Python object besides tensors."""


def load_weights(data: bytes, device: torch.device) -> Dict[str, torch.Tensor]:
    """Read a saved state_dict without running any code it carries.

    torch.load unpickles, and an unpickled object may run code as it is
    built; `weights_only=True` accepts tensors and plain containers only
    (the default from torch 2.6, while setup.cfg allows 2.1).

    data (bytes): what `torch.save(encoder.state_dict())` wrote.
    device (torch.device): where the tensors go.
    RETURNS (Dict[str, torch.Tensor]): the state_dict.
    RAISES (UnsafeWeightsError): the data holds anything else; it is not built.
    """
    try:
        return torch.load(BytesIO(data), map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise  # a truncated or garbled file, not a refused object
        found = _REFUSED_NAME.search(str(err))
        # from None: torch's own text advises weights_only=False, the unsafe way out.
        raise UnsafeWeightsError(
            "the encoder weights (the component's 'model' file) hold a pickled Python object"
            f"{f' ({found[1]})' if found else ''} besides tensors; refused without loading it, since "
            "loading could run code: the pipeline was not saved by spacy-early-exit, or was altered"
        ) from None


class EncoderHolder(nn.Module):
    """A slot for the encoder, which exists only once labels are known."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder: Optional[EarlyExitEncoder] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.encoder is None:
            raise ValueError(
                "The early-exit encoder is not initialized: call nlp.initialize() "
                "(or train the pipeline) before using it"
            )
        return self.encoder(*args, **kwargs)


@dataclass(frozen=True)
class LearningRates:
    """Per-group learning rates the shim applies on each update.

    learn_rate (Optional[float]): off-ramp rate; None keeps the optimizer's own.
    backbone_lr_factor (float): backbone rate = off-ramp rate x this.
    warmup_steps (int): linear warm-up over this many updates.
    embedding_lr_factor (Optional[float]): the input word embeddings' rate =
        off-ramp rate x this; None = `backbone_lr_factor`.
    """

    learn_rate: Optional[float] = None
    backbone_lr_factor: float = 1.0
    warmup_steps: int = 0
    embedding_lr_factor: Optional[float] = None


class EarlyExitShim(PyTorchShim):
    """PyTorchShim with self-contained serialization and per-group learning rates."""

    def __init__(self) -> None:
        super().__init__(EncoderHolder())
        self.tokenizer: Any = None
        # Built on first use for the layer's (max_length, pretokenized); reset
        # whenever the tokenizer changes (build, vocabulary extension, load).
        self._aligner: Optional[Aligner] = None
        self.rates = LearningRates()
        self.n_updates = 0

    @property
    def encoder(self) -> Optional[EarlyExitEncoder]:
        return self._model.encoder

    @property
    def device(self) -> torch.device:
        # Read on every call (the inputs go there): the embedding table's
        # device directly, not the first of a walk over every module.
        encoder = self._model.encoder
        if encoder is None:
            return super().device
        return encoder.backbone.get_input_embeddings().weight.device

    def aligner(self, max_length: Optional[int], pretokenized: bool) -> Aligner:
        """The token-to-wordpiece aligner for this tokenizer (cached).

        max_length (Optional[int]): longest row in wordpieces; None = the
            backbone's position limit, which it may not exceed.
        pretokenized (bool): tokenize each spaCy token on its own.
        """
        encoder = self.encoder
        if encoder is None or self.tokenizer is None:
            raise ValueError(
                "The early-exit encoder is not initialized: call nlp.initialize() "
                "(or train the pipeline) before using it"
            )
        if self._aligner is None:
            limit = backbone_spec(encoder.backbone, self.tokenizer).max_positions
            wanted = max_length or limit
            if wanted > limit:
                raise ValueError(f"'max_length' {wanted} exceeds the backbone's position limit {limit}")
            self._aligner = Aligner(self.tokenizer, wanted, pretokenized=pretokenized)
        return self._aligner

    def build(self, name: str, head_sizes: Sequence[int], ramp_dropout: float) -> None:
        """Load the pretrained backbone `name` and add fresh off-ramps.

        head_sizes (Sequence[int]): each head's class count; empty for a
            shared encoder whose heads join later (`EarlyExitEncoder.set_head`).
        """
        backbone, tokenizer = load_pretrained(name)
        self.tokenizer = tokenizer
        self._aligner = None
        self._model.encoder = EarlyExitEncoder(backbone, ramp_dropout=ramp_dropout, head_sizes=head_sizes)
        self._model.to(self.device_for_build())

    def extend_vocabulary(self, texts: Iterable[str]) -> List[str]:
        """Add every character of `texts` that the tokenizer can only map to its
        unknown token as a new wordpiece, with a new embedding row (initialized
        from the old rows' mean by transformers, then learned).

        RETURNS (List[str]): the characters added, in sorted order.
        """
        tokenizer, encoder = self.tokenizer, self.encoder
        unk = tokenizer.unk_token_id
        chars = sorted({c for text in texts for c in text if not c.isspace()})
        if unk is None or not chars:
            return []
        # Through the Python wrapper: a backend set to pad (all-MiniLM-L6-v2's
        # pads to 128) would hide the lone unknown id among padding.
        encoded = tokenizer(chars, add_special_tokens=False, padding=False, truncation=False)["input_ids"]
        unknown = [c for c, ids in zip(chars, encoded) if ids == [unk]]
        if unknown:
            tokenizer.add_tokens(unknown)
            encoder.backbone.resize_token_embeddings(len(tokenizer))
            self._aligner = None
        return unknown

    def device_for_build(self) -> torch.device:
        from thinc.util import get_torch_default_device

        return get_torch_default_device()

    def predict(self, inputs: Any) -> Any:
        # Thinc's shim switches every module to eval and back to train on each
        # call: a quarter of the time at batch size 1. Switch only when needed
        # (begin_update switches back to train mode).
        if self._model.training:
            self._model.eval()
        # Without oneDNN: its per-shape primitive cache fragments the heap over
        # long streams (see memory.py).
        with torch.inference_mode(), native_kernels():
            return self._model(*inputs.args, **inputs.kwargs)

    def predict_sequence(self, row: SequenceRow, policy: Optional[ExitPolicy]) -> Optional[Tuple[Any, ...]]:
        """One row's word logits, exit layers, FLOPs and full-depth FLOPs
        through the encoder's one-call sequence graph, numpy in and out
        (document_pass.predict_sequence); None where the encoder would run
        its eager loop, so the caller goes through `predict`."""
        if self._model.training:
            self._model.eval()
        return predict_sequence(self.encoder, row.ids, row.word_cols, row.pair_cols, row.pair_words, policy)

    def finish_update(self, optimizer: Optimizer) -> None:
        self.n_updates += 1
        rates = self.rates
        warm = min(1.0, self.n_updates / rates.warmup_steps) if rates.warmup_steps else 1.0
        base = float(optimizer.learn_rate) if optimizer.learn_rate else 1.0
        embeddings = self.encoder.backbone.get_input_embeddings().weight if self.encoder is not None else None
        for name, param in self._model.named_parameters():
            if param.grad is None:
                continue
            scale = warm
            if rates.learn_rate is not None:
                scale *= rates.learn_rate / base
            if param is embeddings and rates.embedding_lr_factor is not None:
                scale *= rates.embedding_lr_factor
            elif not name.startswith(RAMP_PREFIX):
                scale *= rates.backbone_lr_factor
            weights, _ = optimizer(
                (self.id, name), torch2xp(param.data), torch2xp(param.grad), lr_scale=scale
            )
            param.data = xp2torch(weights, requires_grad=True, device=param.device)
            param.grad.zero_()
        if self.encoder is not None:
            # The reduced-precision copies (encoder/precision.py) are stale now.
            self.encoder.weights_changed()

    def to_bytes(self) -> bytes:
        encoder = self.encoder
        if encoder is None:
            return srsly.msgpack_dumps({"initialized": False})
        state = BytesIO()
        torch.save(encoder.state_dict(), state)
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        msg: Dict[str, Any] = {
            "initialized": True,
            "backbone_config": encoder.backbone.config.to_dict(),
            "n_classes": encoder.n_classes,
            "head_sizes": list(encoder.head_sizes),
            "ramp_dropout": float(encoder.ramps[0][0].p),
            "tokenizer": files,
            "state": state.getvalue(),
        }
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, bytes_data: bytes) -> "EarlyExitShim":
        from transformers import AutoTokenizer

        msg = srsly.msgpack_loads(bytes_data)
        if not msg.get("initialized"):
            return self
        device = self.device_for_build()
        backbone = build_from_config(msg["backbone_config"])
        # Pipelines saved before shared encoders wrote one head's class count,
        # as "n_classes" (or "n_labels", before that rename).
        if "head_sizes" in msg:
            head_sizes = [int(n) for n in msg["head_sizes"]]
        else:
            head_sizes = [msg["n_classes"] if "n_classes" in msg else msg["n_labels"]]
        encoder = EarlyExitEncoder(backbone, ramp_dropout=msg["ramp_dropout"], head_sizes=head_sizes)
        try:
            encoder.load_state_dict(load_weights(msg["state"], device))
        except UnsafeWeightsError:
            raise
        except Exception as err:  # torch raises several types for bad files
            raise ValueError(f"Could not load the early-exit encoder weights: {err}") from err
        with tempfile.TemporaryDirectory() as tmp:
            for file_name, data in msg["tokenizer"].items():
                Path(tmp, file_name).write_bytes(data)
            tokenizer = AutoTokenizer.from_pretrained(tmp, use_fast=True, local_files_only=True)
        check_tokenizer(tokenizer, "saved tokenizer")
        self._model.encoder = encoder.to(device)
        self.tokenizer = tokenizer
        self._aligner = None
        return self
