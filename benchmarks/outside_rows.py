"""Rows run outside the early-exit pipeline, for benchmarks/precision.py.

Same weights, other runtimes, and a different model on the same corpus:

- `hf-full`, `hf-int8`: the weights as a plain transformers model (hf_full.py),
  fp32 and after torch's `quantize_dynamic`;
- `ort-fp32`: the same backbone and last off-ramp exported once to ONNX
  (`torch.onnx.export`, the TorchScript exporter, opset 17, dynamic batch and
  sequence axes), fused by `onnxruntime.transformers.optimizer` for BERT
  (Attention, SkipLayerNormalization, BiasGelu: the graph a practitioner
  deploys), run by an ONNX Runtime CPU session with the benchmark's threads;
- `ort-int8`: that fused graph after ONNX Runtime's `quantize_dynamic` (int8
  weights, activations quantized on the fly);
- `spacy-cnn`: spaCy's own efficiency NER pipeline (tok2vec CNN +
  transition-based parser) trained on the same corpus by train_spacy_cnn.sh:
  what spaCy users run when speed matters.

The ORT rows reuse HFFullDepth's tokenization and first-wordpiece decoding
(only the forward pass differs), so their F1 is scored like hf-full's. The
ONNX files live in a temporary folder only while the sessions are built.
"""
import logging
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import spacy
import torch
from spacy.language import Language
from spacy.training import Example
from torch import nn
from transformers import BatchEncoding

from hf_full import HFFullDepth
from table_harness import DOCUMENT_ORDER, LENGTH_SORTED, Runner, Timing, run_orders, scored_percent

from spacy_early_exit.encoder.ort_layer import onnxruntime_missing as packages_missing

ORT_METHODS = ("ort-fp32", "ort-int8")
SPACY_CNN = "spacy-cnn"
OUTSIDE_METHODS = ORT_METHODS + (SPACY_CNN,)
# The batch sizes spacy-cnn is timed at: spaCy's own pipelines run fastest on
# large batches (nlp.pipe's default is 1000 for this config), so the row
# reports its best rather than the table's 32.
SPACY_CNN_BATCH_SIZES = (1, 32, 128, 1000)


def large_batch_sizes(batch_sizes: Sequence[int]) -> Tuple[int, ...]:
    """The batch sizes a row that gains from large batches (spacy-cnn, ours) is
    timed at beyond the table's, its largest column then its best from there up.

    batch_sizes (Sequence[int]): the table's batch sizes.
    RETURNS (Tuple[int, ...]): the extra sizes.
    """
    return tuple(b for b in SPACY_CNN_BATCH_SIZES if b not in batch_sizes)
# Every row of precision.py is timed in both run orders and reports its
# faster: the same rule for our rows and every outside row.
BOTH_ORDERS = (DOCUMENT_ORDER, LENGTH_SORTED)


def onnxruntime_missing() -> Optional[str]:
    """Why the ORT rows cannot run here, or None when they can.

    RETURNS (Optional[str]): a one-line reason (an import failed), else None.
    """
    missing = packages_missing()
    if missing is not None:
        return missing
    try:
        # The exporter's tools beside what the package's int8-ort needs.
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401
        from onnxruntime.transformers.optimizer import optimize_model  # noqa: F401
    except ImportError as error:
        return f"onnxruntime's quantization or optimizer tools do not import ({error})"
    return None


class LastRamp(nn.Module):
    """The backbone and the last off-ramp as one module with positional
    inputs, in the order the tokenizer returns them (what the exporter traces).

    encoder (nn.Module): the component's EarlyExitEncoder (`backbone`, `ramps`).
    names (Sequence[str]): the tokenizer's input names, in order.
    """

    def __init__(self, encoder: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.backbone = encoder.backbone
        self.ramp = encoder.ramps[-1]
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """inputs (torch.Tensor): one tensor per name. RETURNS (torch.Tensor): the logits."""
        return self.ramp(self.backbone(**dict(zip(self.names, inputs))).last_hidden_state)


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Mute the root logger's warnings: onnxruntime.quantization advises
    pre-processing for static quantization on every call, which does not
    apply to dynamic quantization of an already fused graph."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export_onnx(hf: HFFullDepth, path: Path) -> Path:
    """Export hf-full's forward pass (backbone + last off-ramp) to ONNX.

    hf (HFFullDepth): the reference row; its encoder is in eval mode.
    path (Path): the .onnx file to write.
    RETURNS (Path): the file.
    """
    # Two rows of different length: the traced graph keeps the padding mask
    # (a batch without padding could trace the mask away).
    sample = hf.encode([["a", "b", "c"], ["a"]])
    names = list(sample.keys())
    module = LastRamp(hf.encoder, names).eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in names + ["logits"]}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo, and
        # tracing warns about constants; its graph is the one the BERT
        # optimizer fuses, so it is used on purpose.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(sample[name] for name in names), str(path), input_names=names, output_names=["logits"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    return path


def optimize_onnx(path: Path, hf: HFFullDepth, out: Path) -> Dict[str, int]:
    """Fuse the exported graph with ONNX Runtime's BERT optimizer.

    path (Path): the exported graph.
    hf (HFFullDepth): the reference row (the backbone's heads and width).
    out (Path): where the fused graph goes.
    RETURNS (Dict[str, int]): the fused operators the optimizer reports, those it made only.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    config = hf.encoder.backbone.config
    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    optimized.save_model_to_file(str(out))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def quantize_onnx(path: Path, out: Path) -> Dict[str, int]:
    """ONNX Runtime's dynamic int8 quantization of a fused graph.

    path (Path): the fused fp32 graph.
    out (Path): where the int8 graph goes.
    RETURNS (Dict[str, int]): the quantized operators in the result, by type.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger():
        # The optimizer's contrib operators (Attention, SkipLayerNormalization)
        # carry no type information the quantizer can read: it needs a default.
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ops = Counter(node.op_type for node in onnx.load(str(out)).graph.node)
    return {op: n for op, n in sorted(ops.items()) if "Integer" in op or "Quant" in op}


class OrtFullDepth(HFFullDepth):
    """hf-full's tokenization and decoding around an ONNX Runtime session.

    nlp (Language): the trained pipeline (for the tokenizer, classes and decoding).
    model (Path): the ONNX graph to run.
    threads (int): the session's intra-op threads (the benchmark's torch threads).
    """

    tensor_type = "np"

    def __init__(self, nlp: Language, model: Path, threads: int) -> None:
        import onnxruntime

        super().__init__(nlp)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # One operator at a time: the parallelism is inside each operator, as
        # in torch with the same thread count.
        options.inter_op_num_threads = 1
        self.threads = threads
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def best_ids(self, encoding: BatchEncoding) -> List[List[int]]:
        """The session's logits, argmax per wordpiece.

        encoding (BatchEncoding): what `encode` returned (numpy arrays).
        RETURNS (List[List[int]]): one id per padded wordpiece, per row.
        """
        feed = {name: np.asarray(encoding[name], dtype=np.int64) for name in self.input_names}
        return self.session.run(["logits"], feed)[0].argmax(-1).tolist()


def ort_rows(nlp: Language, methods: Sequence[str], threads: int) -> Dict[str, Tuple[OrtFullDepth, Dict[str, Any]]]:
    """Export, fuse and (for ort-int8) quantize once, in a temporary folder.

    nlp (Language): the trained pipeline.
    methods (Sequence[str]): some of ORT_METHODS.
    threads (int): the sessions' intra-op threads.
    RETURNS (Dict[str, Tuple[OrtFullDepth, Dict[str, Any]]]): per method the
        labeller and its runtime record (what ran, fused operators, threads).
    """
    import onnxruntime

    reference = HFFullDepth(nlp)
    out: Dict[str, Tuple[OrtFullDepth, Dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ort-rows-") as folder:
        exported = export_onnx(reference, Path(folder) / "exported.onnx")
        fused = optimize_onnx(exported, reference, Path(folder) / "fused.onnx")
        common = {
            "engine": f"onnxruntime {onnxruntime.__version__}", "provider": "CPUExecutionProvider",
            "export": "torch.onnx.export (TorchScript), opset 17, dynamic batch and sequence",
            "optimizer": "onnxruntime.transformers.optimizer, model_type bert",
            "fused_operators": fused, "intra_op_threads": threads, "inter_op_threads": 1,
        }
        if "ort-fp32" in methods:
            out["ort-fp32"] = (OrtFullDepth(nlp, Path(folder) / "fused.onnx", threads), common)
        if "ort-int8" in methods:
            quantized = quantize_onnx(Path(folder) / "fused.onnx", Path(folder) / "int8.onnx")
            record = {**common, "quantization": "quantize_dynamic, QInt8 weights, DefaultTensorType FLOAT",
                      "quantized_operators": quantized}
            out["ort-int8"] = (OrtFullDepth(nlp, Path(folder) / "int8.onnx", threads), record)
    # The sessions hold their graphs in memory: the folder is gone, nothing stays on disk.
    return out


class OutsideRow:
    """One row labelled outside the early-exit pipeline: its result on the
    test split and its timing.

    method (str): the row's name.
    precision (str): what its weights compute in.
    runtime (Dict[str, Any]): what ran it (written into the row).
    """

    def __init__(self, method: str, precision: str, runtime: Dict[str, Any]) -> None:
        self.method = method
        self.precision = precision
        self.runtime = runtime

    def result(self, nlp: Language, test: Sequence[Example], metric: str) -> Dict[str, Any]:
        """Score, and FLOPs/layer speed-up 1.0 (full depth, no early exit).

        nlp (Language): the early-exit pipeline, whose scorers score the docs.
        test (Sequence[Example]): the gold examples.
        metric (str): the score key.
        RETURNS (Dict[str, Any]): the row's result.
        """
        raise NotImplementedError

    def timing(self, texts: Sequence[str], words: Sequence[Sequence[str]], batch_sizes: Sequence[int]) -> Timing:
        """How to time the row on the timing docs.

        texts (Sequence[str]): the timing docs' texts.
        words (Sequence[Sequence[str]]): the same docs as the pipeline tokenizes them.
        batch_sizes (Sequence[int]): the table's batch sizes.
        RETURNS (Timing): the row's runners.
        """
        raise NotImplementedError


class LabellerRow(OutsideRow):
    """hf-full, hf-int8, ort-fp32 or ort-int8: an HFFullDepth on pre-split words.

    method (str): the row's name.
    precision (str): "fp32" or "int8".
    labeller (HFFullDepth): the forward pass with hf-full's tokenization and decoding.
    runtime (Dict[str, Any]): what ran it.
    orders (Sequence[str]): the run orders timed: DOCUMENT_ORDER, and
        LENGTH_SORTED for the rows that report their faster order.
    """

    def __init__(self, method: str, precision: str, labeller: HFFullDepth, runtime: Dict[str, Any],
                 orders: Sequence[str] = (DOCUMENT_ORDER,)) -> None:
        super().__init__(method, precision, runtime)
        self.labeller = labeller
        self.orders = tuple(orders)

    def result(self, nlp: Language, test: Sequence[Example], metric: str) -> Dict[str, Any]:
        docs = self.labeller.annotate([eg.predicted for eg in test])
        return {"score": scored_percent(nlp, docs, test, metric), "flops_speedup": 1.0,
                "mean_exit_layer": float(len(self.labeller.encoder.layers)), "layer_speedup": 1.0}

    def timing(self, texts: Sequence[str], words: Sequence[Sequence[str]], batch_sizes: Sequence[int]) -> Timing:
        ordered = run_orders(words, [len(w) for w in words], self.orders)
        return Timing({order: self.runner(rows) for order, rows in ordered.items()})

    def runner(self, rows: List[Sequence[str]]) -> Runner:
        """A runner over the docs in the given order.

        rows (List[Sequence[str]]): the docs' words, in run order.
        RETURNS (Runner): labels the rows in the slice at the batch size.
        """
        return lambda part, batch_size: self.labeller.run(rows[part], batch_size)


class SpacyCnnRow(OutsideRow):
    """spaCy's efficiency NER pipeline, run with `nlp.pipe` on the texts.

    path (Path): the trained pipeline (model-best of train_spacy_cnn.sh).
    orders (Sequence[str]): the run orders timed (see LabellerRow).
    """

    def __init__(self, path: Path, orders: Sequence[str] = (DOCUMENT_ORDER,)) -> None:
        self.nlp = spacy.load(path)
        self.orders = tuple(orders)
        runtime = {"engine": f"spacy {spacy.__version__}", "pipeline": str(path), "components": self.nlp.pipe_names,
                   "threads": "thinc NumpyOps on the CPU (blis, one thread; --threads does not apply)",
                   "batch_sizes": list(SPACY_CNN_BATCH_SIZES)}
        super().__init__(SPACY_CNN, "fp32", runtime)

    def result(self, nlp: Language, test: Sequence[Example], metric: str) -> Dict[str, Any]:
        # Texts in, as run_examples feeds the early-exit rows: each pipeline
        # tokenizes for itself and the Scorer aligns to the gold words.
        docs = list(self.nlp.pipe([eg.reference.text for eg in test], batch_size=64))
        # No transformer layers and no early exit: the FLOPs/layer speed-ups
        # are 1.0 by definition, as for the other full-depth outside rows.
        return {"score": scored_percent(nlp, docs, test, metric), "flops_speedup": 1.0, "mean_exit_layer": None,
                "layer_speedup": 1.0}

    def timing(self, texts: Sequence[str], words: Sequence[Sequence[str]], batch_sizes: Sequence[int]) -> Timing:
        def runner(ordered: Sequence[str]) -> Runner:
            def run(part: slice, batch_size: int) -> None:
                for _ in self.nlp.pipe(ordered[part], batch_size=batch_size):
                    pass

            return run

        ordered = run_orders(texts, [len(w) for w in words], self.orders)
        return Timing({order: runner(rows) for order, rows in ordered.items()},
                      extra_batch_sizes=large_batch_sizes(batch_sizes))


def practitioner_int8(nlp: Language) -> HFFullDepth:
    """`hf-full` after one line of dynamic int8 quantization of every nn.Linear
    (the off-ramp included, as `quantize_dynamic(model, {nn.Linear})` on a
    token classifier would): what a user would run today for speed.

    nlp (Language): the trained pipeline.
    RETURNS (HFFullDepth): the quantized reference row.
    """
    hf = HFFullDepth(nlp)
    with warnings.catch_warnings():
        # torch.ao announces its move to torchao; in this torch the API works,
        # and this row is meant to be what practitioners use now.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        # Not in place: the pipeline's own encoder stays fp32.
        hf.encoder = quantize_dynamic(hf.encoder, {nn.Linear}, dtype=torch.qint8).eval()
    return hf


def hf_rows(nlp: Language) -> Dict[str, OutsideRow]:
    """hf-full and hf-int8 (torch, fp32 and quantize_dynamic).

    nlp (Language): the trained pipeline.
    RETURNS (Dict[str, OutsideRow]): the two rows by method.
    """
    torch_runtime = {"engine": f"torch {torch.__version__}", "threads": torch.get_num_threads()}
    return {
        "hf-full": LabellerRow("hf-full", "fp32", HFFullDepth(nlp), torch_runtime, BOTH_ORDERS),
        "hf-int8": LabellerRow("hf-int8", "int8", practitioner_int8(nlp),
                               {**torch_runtime, "quantization": "torch.ao quantize_dynamic, nn.Linear, qint8"}, BOTH_ORDERS),
    }


def outside_rows(nlp: Language, methods: Sequence[str], threads: int, spacy_cnn: Optional[Path]) -> Dict[str, OutsideRow]:
    """The requested rows among OUTSIDE_METHODS, in that order.

    nlp (Language): the trained early-exit pipeline.
    methods (Sequence[str]): some of OUTSIDE_METHODS.
    threads (int): the ORT sessions' intra-op threads.
    spacy_cnn (Optional[Path]): the spacy-cnn pipeline (needed with that row).
    RETURNS (Dict[str, OutsideRow]): the rows by method.
    """
    rows: Dict[str, OutsideRow] = {}
    wanted = [m for m in ORT_METHODS if m in methods]
    if wanted:
        for method, (labeller, runtime) in ort_rows(nlp, wanted, threads).items():
            precision = "int8" if method == "ort-int8" else "fp32"
            rows[method] = LabellerRow(method, precision, labeller, runtime, BOTH_ORDERS)
    if SPACY_CNN in methods:
        if spacy_cnn is None or not spacy_cnn.exists():
            raise FileNotFoundError(f"No spacy-cnn pipeline at {spacy_cnn}: train it with benchmarks/train_spacy_cnn.sh")
        rows[SPACY_CNN] = SpacyCnnRow(spacy_cnn, BOTH_ORDERS)
    return rows

