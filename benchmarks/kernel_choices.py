"""The kernel choices behind the prediction layer stack, measured one by one.

Each of these decided something in `spacy_early_exit/encoder/precision.py`
and `quantized_linear.py`, or decided against something the profile
suggested; all are products of MiniLM's sizes (hidden 384, FFN 1536) on the
row counts a layer sees: 1-30 rows at batch size 1 (one sentence, fewer as
tokens exit), hundreds at batch 32.

1. `linear_layouts`: `nn.Linear`'s ``[out, in]`` weight (x @ W.T) against a
   transposed ``[in, out]`` copy (`FP32Linear`), against the same product in
   int8 (`Int8Linear`, per-token scales) and in bf16 on oneDNN (`BF16Linear`)
   with the plain weight and with the weight reordered once into oneDNN's
   layout, and one fused [Q; K; V] product against Q and [K; V] as two.
2. `output_block`: the part of a layer after attention (output projection,
   residual, LayerNorm, FFN with GELU, residual, LayerNorm) on R rows, in
   eager torch with transposed weights, exported to ONNX and run by ONNX
   Runtime (fp32, graph-optimized), and (with --compile) `torch.compile`
   with dynamic shapes: what an `engine` field would have bought.
3. `bf16_output_block`: the same block in bf16 as the layers ran it before
   (`BF16Linear` products, torch's add, GELU and LayerNorm, every product
   padding its rows to a bucket) against `bf16_block.BF16OutputBlock`
   (residual adds and GELU as oneDNN post-ops, rows padded once).
4. `attention_key_lengths`: torch's scaled_dot_product_attention at batch 32
   (MiniLM's 12 heads of 32, 13 queries per row, a key mask, the strided
   head views the layer passes) for key lengths either side of a multiple of
   16, in bf16 and fp32: why `layer_step.key_span` pads keys to 16.

Every variant is timed interleaved with the others, best of --repeats rounds
of --calls calls (the minimum: these are microseconds, and a busy core only
adds time), with oneDNN off as at prediction (`memory.native_kernels`).

    python benchmarks/kernel_choices.py --threads 1
    python benchmarks/kernel_choices.py --threads 1 --compile   # + torch.compile (about a minute to compile)

Writes benchmarks/results/kernel_choices.json.
"""
import copy
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
import typer
from torch import nn

from spacy_early_exit.encoder.bf16_block import BF16OutputBlock
from spacy_early_exit.encoder.quantized_linear import BF16Linear, FP32Linear, Int8Linear, concatenated
from spacy_early_exit.memory import native_kernels

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, FFN = 384, 1536
ROWS = (1, 7, 14, 33, 64, 200, 600)
HEADS, HEAD_DIM, ATTENTION_ROWS, QUERIES = 12, 32, 32, 13
KEY_LENGTHS = (14, 16, 30, 32, 62, 64)


def best_microseconds(variants: Dict[str, Callable[[], object]], calls: int, repeats: int) -> Dict[str, float]:
    """Per variant, the best mean time of one call over `repeats` interleaved rounds.

    variants (Dict[str, Callable[[], object]]): name -> a call to time.
    calls (int): calls per round and variant.
    repeats (int): rounds; every round runs every variant once.
    RETURNS (Dict[str, float]): name -> microseconds per call.
    """
    best = {name: float("inf") for name in variants}
    for fn in variants.values():  # warm-up: first-call allocations and lazy init
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return {name: round(value, 1) for name, value in best.items()}


def linear_layouts(rows: Sequence[int], calls: int, repeats: int) -> List[Dict[str, object]]:
    """One projection per shape and row count: nn.Linear's layout, the
    transposed copy, int8, and Q + [K; V] against one fused [Q; K; V]."""
    torch.manual_seed(0)
    out: List[Dict[str, object]] = []
    for n_in, n_out in ((HIDDEN, HIDDEN), (HIDDEN, FFN), (FFN, HIDDEN)):
        linear = nn.Linear(n_in, n_out).eval()
        transposed, int8, bf16 = FP32Linear(linear), Int8Linear(linear), BF16Linear(linear)
        plain_bf16 = BF16Linear(linear)
        plain_bf16.packed = None  # the same copy, multiplied by F.linear (reordered per call)
        for n in rows:
            x = torch.randn(n, n_in)
            x16 = x.to(torch.bfloat16)
            times = best_microseconds({
                "nn_linear": lambda: linear(x),
                "transposed": lambda: transposed(x),
                "int8": lambda: int8(x),
                "bf16_plain": lambda: plain_bf16(x16),
                "bf16_packed": lambda: bf16(x16),
            }, calls, repeats)
            out.append({"in": n_in, "out": n_out, "rows": n, "microseconds": times,
                        "transposed_speedup": round(times["nn_linear"] / times["transposed"], 2)})
    q, k, v = (nn.Linear(HIDDEN, HIDDEN).eval() for _ in range(3))
    fused, query, key_value = FP32Linear(concatenated((q, k, v))), FP32Linear(q), FP32Linear(concatenated((k, v)))
    for n in rows:
        x = torch.randn(n, HIDDEN)
        times = best_microseconds({"fused_qkv": lambda: fused(x), "q_then_kv": lambda: (query(x), key_value(x))},
                                  calls, repeats)
        out.append({"in": HIDDEN, "out": 3 * HIDDEN, "rows": n, "microseconds": times})
    return out


class OutputBlock(nn.Module):
    """A BERT layer after attention, as plain modules (what gets exported)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_out, self.ffn_in, self.ffn_out = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
        self.attn_norm, self.ffn_norm = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attn = self.attn_norm(self.attn_out(context) + residual)
        return self.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(attn))) + attn)


class TransposedOutputBlock(nn.Module):
    """The same block on `FP32Linear` copies: what the fp32 stack runs."""

    def __init__(self, block: OutputBlock) -> None:
        super().__init__()
        self.block = block
        self.attn_out, self.ffn_in, self.ffn_out = (FP32Linear(m) for m in (block.attn_out, block.ffn_in, block.ffn_out))

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attn = self.block.attn_norm(self.attn_out(context) + residual)
        return self.block.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(attn))) + attn)


def output_block(rows: Sequence[int], calls: int, repeats: int, threads: int, compile_it: bool) -> Dict[str, object]:
    """The output block in eager torch (both layouts), ONNX Runtime and
    optionally torch.compile, with each variant's largest difference from eager."""
    torch.manual_seed(0)
    block = OutputBlock().eval()
    transposed = TransposedOutputBlock(block)
    report: Dict[str, object] = {"runs": []}
    session = None
    try:
        import onnxruntime as ort
    except ImportError:
        report["onnxruntime"] = "not installed"
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "block.onnx"
            sample = torch.randn(4, HIDDEN)
            torch.onnx.export(block, (sample, sample), str(path), input_names=["context", "residual"],
                              output_names=["out"], opset_version=17, dynamo=False,
                              dynamic_axes={"context": {0: "rows"}, "residual": {0: "rows"}, "out": {0: "rows"}})
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        report["onnxruntime"] = ort.__version__
    compiled: Optional[Callable[..., torch.Tensor]] = None
    if compile_it:
        start = time.perf_counter()
        compiled = torch.compile(transposed, dynamic=True)
        with torch.no_grad():
            for n in (5, 9):  # the second size makes the graph dynamic
                compiled(torch.randn(n, HIDDEN), torch.randn(n, HIDDEN))
        report["compile_seconds"] = round(time.perf_counter() - start, 1)
    with torch.no_grad():
        for n in rows:
            context, residual = torch.randn(n, HIDDEN), torch.randn(n, HIDDEN)
            want = block(context, residual)
            variants: Dict[str, Callable[[], object]] = {
                "eager_nn_linear": lambda: block(context, residual),
                "eager_transposed": lambda: transposed(context, residual),
            }
            gaps = {"eager_transposed": float((transposed(context, residual) - want).abs().max())}
            if session is not None:
                feed = {"context": context.numpy(), "residual": residual.numpy()}
                variants["onnxruntime"] = lambda: session.run(None, feed)
                gaps["onnxruntime"] = float(abs(session.run(None, feed)[0] - want.numpy()).max())
            if compiled is not None:
                variants["torch_compile"] = lambda: compiled(context, residual)
                gaps["torch_compile"] = float((compiled(context, residual) - want).abs().max())
            report["runs"].append({"rows": n, "microseconds": best_microseconds(variants, calls, repeats),
                                   "max_abs_difference": {k: float(f"{v:.2e}") for k, v in gaps.items()}})
    return report


def bf16_output_block(rows: Sequence[int], calls: int, repeats: int) -> List[Dict[str, object]]:
    """The bf16 output block unfused (as before) and fused, with their largest difference."""
    torch.manual_seed(0)
    block = OutputBlock().eval()
    attn_out, ffn_in, ffn_out = (BF16Linear(m) for m in (block.attn_out, block.ffn_in, block.ffn_out))
    attn_norm, ffn_norm = (copy.deepcopy(m).to(torch.bfloat16) for m in (block.attn_norm, block.ffn_norm))
    fused = BF16OutputBlock.make(attn_out, attn_norm, ffn_in, ffn_out, ffn_norm, "Gelu")
    if fused is None:
        return []

    def unfused(context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        attn = attn_norm(attn_out(context) + residual)
        return ffn_norm(ffn_out(F.gelu(ffn_in(attn))) + attn)

    out: List[Dict[str, object]] = []
    with torch.no_grad():
        for n in rows:
            context, residual = (torch.randn(n, HIDDEN).to(torch.bfloat16) for _ in range(2))
            gap = float((fused(context, residual).float() - unfused(context, residual).float()).abs().max())
            times = best_microseconds({"unfused": lambda: unfused(context, residual),
                                       "fused": lambda: fused(context, residual)}, calls, repeats)
            out.append({"rows": n, "microseconds": times, "speedup": round(times["unfused"] / times["fused"], 2),
                        "max_abs_difference": float(f"{gap:.2e}")})
    return out


def attention_key_lengths(calls: int, repeats: int) -> List[Dict[str, object]]:
    """Attention time per key length and dtype (see the module docstring)."""
    torch.manual_seed(0)
    width = HEADS * HEAD_DIM
    out: List[Dict[str, object]] = []

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], HEADS, HEAD_DIM).transpose(1, 2)

    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            for keys in KEY_LENGTHS:
                q = torch.randn(ATTENTION_ROWS, QUERIES, width).to(dtype)
                kv = torch.randn(ATTENTION_ROWS, keys, 2 * width).to(dtype)
                mask = torch.ones(ATTENTION_ROWS, 1, 1, keys, dtype=torch.bool)
                mask[1:, ..., keys - 2:] = False  # shorter rows: the mask is real
                k, v = kv.chunk(2, dim=-1)
                times = best_microseconds({"sdpa": lambda: F.scaled_dot_product_attention(
                    heads(q), heads(k), heads(v), attn_mask=mask)}, calls, repeats)
                out.append({"dtype": str(dtype).replace("torch.", ""), "keys": keys, "queries": QUERIES,
                            "rows": ATTENTION_ROWS, "microseconds": times["sdpa"]})
    return out


def main(
    threads: int = typer.Option(1, help="torch and ONNX Runtime intra-op threads"),
    calls: int = typer.Option(200, help="Calls per round and variant"),
    repeats: int = typer.Option(7, help="Interleaved rounds (the best is kept)"),
    rows: str = typer.Option(",".join(map(str, ROWS)), help="Row counts, comma-separated"),
    compile_it: bool = typer.Option(False, "--compile", help="Also time torch.compile (dynamic shapes)"),
    output: Path = typer.Option(RESULTS / "kernel_choices.json", help="The results file"),
) -> None:
    torch.set_num_threads(threads)
    counts = [int(n) for n in rows.split(",") if n.strip()]
    start = time.perf_counter()
    with native_kernels(), torch.inference_mode(False):
        report = {
            "linear_layouts": linear_layouts(counts, calls, repeats),
            "output_block": output_block(counts, calls, repeats, threads, compile_it),
            "bf16_output_block": bf16_output_block(counts, calls, repeats),
            "attention_key_lengths": attention_key_lengths(calls, repeats),
        }
    report.update(
        threads=threads, calls=calls, repeats=repeats, seconds=round(time.perf_counter() - start, 1),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        command=f"python benchmarks/kernel_choices.py --threads {threads}" + (" --compile" if compile_it else "")
        + (f" --output {output}" if output != RESULTS / "kernel_choices.json" else ""),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    for entry in report["linear_layouts"]:
        print(entry)
    for entry in report["output_block"]["runs"] + report["bf16_output_block"] + report["attention_key_lengths"]:
        print(entry)
    print(f"wrote {output}")


if __name__ == "__main__":
    typer.run(main)
