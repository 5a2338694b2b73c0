"""Stress test: many documents, huge documents, two processes; nothing lost, memory flat.

Streams documents through `nlp.pipe` and reports docs processed, errors (must
be 0), tokens lost (must be 0: every token gets an exit layer), resident memory
at checkpoints, seconds per 1,000 tokens on documents far beyond the position
limit, and the throughput of `n_process=2` against one process.

    python benchmarks/stress.py                       # the demo pipeline, if trained
    python benchmarks/stress.py path/to/pipeline --docs 100000
    python benchmarks/stress.py --tiny --docs 5000    # a tiny random model, seconds

Without a path it uses project/training/uner_en_ewt/final, else
.../stage1/model-best, else builds a tiny random model (as --tiny does).
Documents cycle through the demo corpus sentences (project/assets/uner_en_ewt).

Memory: RSS is read at checkpoints of the stream. The components predict
with oneDNN off, because its per-shape kernel cache fragmented glibc's heap
(spacy_early_exit/memory.py). The report also gives RSS after `malloc_trim(0)`
(what is really in use), and with `--jemalloc PATH` the same stream again in a
child process under that allocator (LD_PRELOAD), for comparison.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this working tree's package, whatever is installed

import spacy  # noqa: E402
import torch  # noqa: E402
import typer  # noqa: E402
from spacy.language import Language  # noqa: E402
from spacy.tokens import Doc  # noqa: E402
from spacy_early_exit.memory import HeapTrimmer, release_free_heap  # noqa: E402
from spacy_early_exit.pipes.base import EXTENSION  # noqa: E402
from spacy_early_exit.tools.evaluate import early_exit_pipes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CANDIDATES = [
    ROOT / "project/training/uner_en_ewt/final",
    ROOT / "project/training/uner_en_ewt/stage1/model-best",
]
CORPUS = ROOT / "project/assets/uner_en_ewt"
TINY_SOURCE = "tiny random model (spacy_early_exit.testing)"  # stream_in_child knows it by the "tiny" prefix


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux /proc, else peak RSS)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocator() -> str:
    """The malloc in use: jemalloc or tcmalloc when preloaded, else the C library's."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc"):
        if name in maps:
            return name
    return "glibc" if platform.libc_ver()[0] == "glibc" else "system"


def rss_after_trim() -> Optional[float]:
    """RSS after glibc returns its free heap pages (None off glibc)."""
    # A preloaded jemalloc leaves glibc's malloc_trim in the process, but
    # trimming glibc's (unused) heap would say nothing about jemalloc's.
    if allocator() != "glibc" or not release_free_heap():
        return None
    return round(rss_mib(), 1)


def corpus_texts() -> List[str]:
    """The demo corpus sentences ('# text = ' lines), or synthetic ones."""
    texts = []
    for path in sorted(CORPUS.glob("*.iob2")):
        for line in path.read_text(encoding="utf8").splitlines():
            if line.startswith("# text = "):
                texts.append(line[len("# text = "):])
    if texts:
        return texts
    words = "John Smith flew from London to New York with Google 's CEO on Monday .".split()
    return [" ".join(words[i % 7:] + words[: i % 7]) for i in range(500)]


def tiny_pipeline(tmp: Path) -> Language:
    """A tiny random BERT, briefly trained on four sentences (spacy_early_exit.testing)."""
    from spacy_early_exit.testing import make_ner_nlp, save_tiny_backbone

    return make_ner_nlp(save_tiny_backbone(tmp / "tiny"), steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)


def load_pipeline(path: Optional[Path], tiny: bool, tmp: Path) -> Tuple[Language, str]:
    if tiny:
        return tiny_pipeline(tmp), TINY_SOURCE
    if path is None:
        path = next((p for p in CANDIDATES if p.exists()), None)
    if path is None:
        print("no trained demo pipeline found: using a tiny random model", flush=True)
        return tiny_pipeline(tmp), TINY_SOURCE
    return spacy.load(path), str(path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path)


def cycle(texts: Sequence[str], n: int) -> Iterator[str]:
    for i in range(n):
        yield texts[i % len(texts)]


class ErrorCounter:
    """A component error handler that counts instead of raising."""

    def __init__(self) -> None:
        self.errors: List[str] = []

    def __call__(self, name: str, component: Any, docs: List[Doc], error: Exception) -> None:
        self.errors.append(f"{name}: {type(error).__name__}: {error}"[:300])


def check_doc(doc: Doc, names: List[str]) -> int:
    """Tokens of `doc` with no exit-layer entry, over every early-exit component."""
    records = doc._.get(EXTENSION) or {}
    return sum(len(doc) - len(records.get(name, {}).get("exit_layers", [])) for name in names)


def stream(nlp: Language, texts: Sequence[str], n_docs: int, batch_size: int, checkpoints: Sequence[int]) -> Dict[str, Any]:
    """Stream n_docs through nlp.pipe, recording RSS at the checkpoints."""
    names = [name for name, _ in early_exit_pipes(nlp)]
    counter = ErrorCounter()
    for _, pipe in nlp.pipeline:
        pipe.set_error_handler(counter)
    docs = tokens = lost = flops = full = 0
    rss: Dict[str, float] = {"start": round(rss_mib(), 1)}
    start = time.perf_counter()
    for doc in nlp.pipe(cycle(texts, n_docs), batch_size=batch_size):
        docs += 1
        tokens += len(doc)
        lost += check_doc(doc, names)
        for name in names:
            flops += doc._.get(EXTENSION)[name]["flops"]
            full += doc._.get(EXTENSION)[name]["full_flops"]
        if docs in checkpoints:
            rss[str(docs)] = round(rss_mib(), 1)
            elapsed = time.perf_counter() - start
            print(f"  {docs:>7} docs  {tokens:>9} tokens  {elapsed:7.1f} s  RSS {rss[str(docs)]:.1f} MiB", flush=True)
    seconds = time.perf_counter() - start
    return {
        "docs_in": n_docs,
        "docs_out": docs,
        "errors": len(counter.errors) + (n_docs - docs),
        "error_messages": counter.errors[:5],
        "tokens": tokens,
        "tokens_lost": lost,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "flops_speedup": round(full / flops, 3) if flops else None,
        "allocator": allocator(),
        "rss_mib": rss,
        "rss_mib_after_malloc_trim": rss_after_trim(),
    }


def stream_in_child(pipeline: str, preload: Path, docs: int, batch_size: int) -> Dict[str, Any]:
    """The same stream in a child process with another malloc preloaded."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stream.json"
        args = [sys.executable, __file__, "--stream-only", "--docs", str(docs), "--batch-size", str(batch_size), "--output", str(out)]
        args += ["--tiny"] if pipeline.startswith("tiny") else [pipeline]
        env = {**os.environ, "LD_PRELOAD": str(preload)}
        subprocess.run(args, env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())["stream"]


def long_document(nlp: Language, texts: Sequence[str], n_tokens: int) -> Doc:
    """One document of at least n_tokens, made of corpus sentences."""
    parts, count, i = [], 0, 0
    while count < n_tokens:
        parts.append(texts[i % len(texts)])
        count += len(texts[i % len(texts)].split()) + 1
        i += 1
    doc = nlp.make_doc(" ".join(parts))
    return doc[:n_tokens].as_doc() if len(doc) > n_tokens else doc


def time_long_documents(nlp: Language, texts: Sequence[str], sizes: Sequence[int], repeats: int) -> List[Dict[str, Any]]:
    """Seconds per 1,000 tokens for documents of the given sizes (best of repeats)."""
    names = [name for name, _ in early_exit_pipes(nlp)]
    rows = []
    nlp(long_document(nlp, texts, 500))  # warm-up
    for size in sizes:
        best, lost = float("inf"), 0
        for _ in range(repeats):
            doc = long_document(nlp, texts, size)
            start = time.perf_counter()
            doc = nlp(doc)
            best = min(best, time.perf_counter() - start)
            lost = max(lost, check_doc(doc, names))
        rows.append({"tokens": len(doc), "seconds": round(best, 3), "seconds_per_1k_tokens": round(1000 * best / len(doc), 4), "tokens_lost": lost})
        print(f"  {len(doc):>6}-token doc: {best:.2f} s, {1000 * best / len(doc):.4f} s per 1k tokens, lost {lost}", flush=True)
    return rows


def signature(doc: Doc, names: List[str]) -> Any:
    return [(e.start, e.end, e.label_) for e in doc.ents], [doc._.get(EXTENSION)[n] for n in names]


def paragraphs(texts: Sequence[str], size: int) -> List[str]:
    """Corpus sentences joined `size` at a time."""
    return [" ".join(texts[i:i + size]) for i in range(0, len(texts) - size + 1, size)]


def compare_processes(nlp: Language, texts: Sequence[str], n_docs: int, batch_size: int) -> Dict[str, Any]:
    """Throughput of n_process=2 against one process on the same docs; same output."""
    names = [name for name, _ in early_exit_pipes(nlp)]
    batch = list(cycle(texts, n_docs))
    tokens = sum(len(doc) for doc in nlp.tokenizer.pipe(batch))
    timing, outputs = {}, {}
    for n_process in (1, 2):
        start = time.perf_counter()
        outputs[n_process] = [signature(d, names) for d in nlp.pipe(batch, batch_size=batch_size, n_process=n_process)]
        timing[n_process] = time.perf_counter() - start
        print(f"  n_process={n_process}: {timing[n_process]:.1f} s for {n_docs} docs", flush=True)
    return {
        "docs": n_docs,
        "tokens": tokens,
        "seconds": {str(k): round(v, 2) for k, v in timing.items()},
        "throughput_ratio_2_vs_1": round(timing[1] / timing[2], 3),
        "same_output": outputs[1] == outputs[2],
        "torch_threads_one_process": torch.get_num_threads(),
        "torch_threads_per_worker": 1,
    }


def main(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline folder (default: the trained demo pipeline)"),
    tiny: bool = typer.Option(False, "--tiny", help="Use a tiny random model"),
    docs: int = typer.Option(100_000, help="Documents to stream"),
    batch_size: int = typer.Option(64, help="nlp.pipe batch size"),
    long_sizes: str = typer.Option("5000,20000,50000", help="Token counts of the long documents"),
    repeats: int = typer.Option(2, help="Timing repetitions for long documents (best kept)"),
    mp_docs: int = typer.Option(4000, help="Documents for the n_process comparison"),
    jemalloc: Optional[Path] = typer.Option(None, help="libjemalloc.so: also stream under it, in a child process"),
    stream_only: bool = typer.Option(False, "--stream-only", help="Only the streaming part"),
    heap_trim_interval: Optional[int] = typer.Option(None, help="Set every early-exit component's heap_trim_interval (default: the pipeline's own)"),
    output: Path = typer.Option(RESULTS / "stress.json", help="JSON report"),
) -> None:
    begin = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        nlp, source = load_pipeline(pipeline, tiny, Path(tmp))
        texts = corpus_texts()
        names = [name for name, _ in early_exit_pipes(nlp)]
        if heap_trim_interval is not None:
            for name in names:
                nlp.get_pipe(name).heap_trimmer = HeapTrimmer(heap_trim_interval)
        trim = {n: nlp.get_pipe(n).heap_trimmer.interval for n in names}
        policies = {n: vars(nlp.get_pipe(n).policy) for n in names}
        print(f"pipeline {source}: {names}, {policies}; {len(texts)} corpus texts; torch threads {torch.get_num_threads()}", flush=True)
        checkpoints = sorted({c for c in (1000, 10_000, 25_000, 50_000, 75_000, 100_000, docs) if c <= docs})
        print(f"streaming {docs} docs, batch size {batch_size}, malloc: {allocator()}", flush=True)
        streamed = stream(nlp, texts, docs, batch_size, checkpoints)
        streamed["heap_trim_interval"] = trim
        if stream_only:
            output.parent.mkdir(parents=True, exist_ok=True)
            print(json.dumps(streamed, indent=2))
            output.write_text(json.dumps({"stream": streamed}, indent=2) + "\n", encoding="utf8")
            return
        print("long documents", flush=True)
        sizes = [int(s) for s in long_sizes.split(",") if s]
        long_rows = time_long_documents(nlp, texts, sizes, repeats)
        print(f"n_process=2 against 1: {mp_docs} sentences, then the same sentences as 16-sentence paragraphs", flush=True)
        processes = {
            "sentences": compare_processes(nlp, texts, mp_docs, batch_size),
            "paragraphs_of_16": compare_processes(nlp, paragraphs(texts, 16), max(1, mp_docs // 16), max(1, batch_size // 16)),
        }
        other = None
        if jemalloc is not None:
            print(f"streaming {docs} docs again under {jemalloc}", flush=True)
            other = stream_in_child(str(pipeline) if pipeline else source, jemalloc, docs, batch_size)
    import spacy_early_exit

    report = {
        "pipeline": source,
        "package": str(Path(spacy_early_exit.__file__).parent),
        "exit_settings": policies,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs (shared with other work)",
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "stream": streamed,
        "stream_jemalloc": other,
        "long_documents": long_rows,
        "n_process": processes,
        "seconds": round(time.time() - begin, 1),
    }
    ok = streamed["errors"] == 0 and streamed["tokens_lost"] == 0 and all(p["same_output"] for p in processes.values())
    ok = ok and (other is None or (other["errors"] == 0 and other["tokens_lost"] == 0))
    ok = ok and all(row["tokens_lost"] == 0 for row in long_rows)
    report["ok"] = ok
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(json.dumps({k: report[k] for k in ("stream", "stream_jemalloc", "long_documents", "n_process", "ok")}, indent=2))
    print(f"wrote {output}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
