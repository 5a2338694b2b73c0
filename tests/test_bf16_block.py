"""The bf16 stack's fused output block and the prediction-only packing shortcuts."""
import dataclasses

import pytest
import torch

from spacy_early_exit.encoder import layer_step
from spacy_early_exit.encoder.bf16_block import BF16OutputBlock
from spacy_early_exit.encoder.layer_step import PackedRows, _output_block, halt_and_copy_layer
from spacy_early_exit.encoder.model import EarlyExitEncoder
from spacy_early_exit.encoder.quantized_linear import pad_rows
from spacy_early_exit.testing import tiny_backbone

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")


def bf16_parts(family: str):
    encoder = EarlyExitEncoder(tiny_backbone(family), 5).eval()
    return encoder, encoder.layer_stack("bf16").parts


@needs_onednn
@pytest.mark.parametrize("family", ["bert", "albert"])
@pytest.mark.parametrize("shape", [(3,), (17,), (100,), (2, 9)])
def test_the_fused_block_computes_the_unfused_one(family, shape):
    encoder, stack = bf16_parts(family)
    width = encoder.spec.hidden_size
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(*shape, width, generator=generator).to(torch.bfloat16)
    residual = torch.randn(*shape, width, generator=generator).to(torch.bfloat16)
    for parts in stack:
        assert isinstance(parts.output_block, BF16OutputBlock)
        unfused = dataclasses.replace(parts, output_block=None)
        with torch.no_grad():
            got = parts.output_block(context, residual)
            want = _output_block(unfused, context, residual, 0.0)
        assert got.shape == want.shape and got.dtype == torch.bfloat16
        # The post-ops add and activate before rounding to bf16: a bf16 step's difference, no more.
        torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.05)


@needs_onednn
def test_what_the_block_cannot_fuse_stays_unfused():
    _, stack = bf16_parts("bert")
    parts = stack[0]
    pieces = (parts.attn_out, parts.attn_norm, parts.ffn_in, parts.ffn_out, parts.ffn_norm)
    assert BF16OutputBlock.make(*pieces, "Gelu") is not None
    assert BF16OutputBlock.make(*pieces, None) is None  # an activation oneDNN's post-op does not have
    sliced = parts.ffn_in.output_slice(0, 8)  # a view: no packed weight
    assert BF16OutputBlock.make(parts.attn_out, parts.attn_norm, sliced, parts.ffn_out, parts.ffn_norm, "Gelu") is None
    fp32 = EarlyExitEncoder(tiny_backbone("bert"), 5).eval().layer_stack("fp32").parts
    assert all(p.output_block is None for p in fp32)


def test_padding_zeroes_only_the_new_rows():
    rows = torch.randn(5, 4)
    assert pad_rows(rows, 5) is rows and pad_rows(rows, 3) is rows
    padded = pad_rows(rows, 9)
    assert padded.shape == (9, 4) and torch.equal(padded[:5], rows) and not padded[5:].any()


def test_keys_from_the_padded_grid_equal_packed_keys(monkeypatch):
    # Only bf16 projects the grid (fp32 and int8 pack: their products cost more per padded row).
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    stack = encoder.layer_stack("bf16")
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 8, encoder.spec.hidden_size, generator=generator).to(stack.dtype or torch.float32)
    present = torch.ones(3, 8, dtype=torch.bool)
    present[1, 6:] = False  # a shorter row: padding in the key grid
    active = present.clone()
    active[0, ::2] = False  # halted pieces stay keys
    outputs = {}
    for limit in (0.0, 10.0):  # always pack; always the grid
        monkeypatch.setattr(layer_step, "GRID_PROJECTION_LIMIT", limit)
        with torch.no_grad():
            outputs[limit] = halt_and_copy_layer(stack.parts[0], hidden.clone(), present, PackedRows(active),
                                                 encoder.spec.num_heads)
    assert not torch.equal(outputs[0.0][active], hidden[active])
    torch.testing.assert_close(outputs[0.0], outputs[10.0], atol=0.05, rtol=1e-4)


def test_only_bf16_pads_keys_to_16():
    bf16, fp32 = torch.zeros(1, 1, dtype=torch.bfloat16), torch.zeros(1, 1)
    assert [layer_step.key_span(n, bf16) for n in (1, 14, 16, 17, 62)] == [16, 16, 16, 32, 64]
    assert [layer_step.key_span(n, fp32) for n in (1, 14, 17)] == [1, 14, 17]  # fp32, int8 and training: unchanged
