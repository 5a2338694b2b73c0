"""Stage-1 training speed beside a busy process: the old thread default against `auto`.

On a 2-core machine, the demo's stage 1 with 2 torch threads ran ~20x slower
while one other single-threaded job held a core. This measures the demo's
stage-1 updates/s (project/scripts/train.py on the bundled UNER English-EWT
corpus with the offline MiniLM backbone), each condition a fresh process:

- quiet-auto: nothing else running; --threads auto (2 on a quiet 2-core machine).
- busy-old: beside one busy single-threaded process (a Python loop); the old
  default: --threads 2 and OpenMP's own wait policy. The package now sets
  GOMP_SPINCOUNT=3000 unless the user set a wait policy or spin count, so
  "unset" cannot be asked for: ACTIVE with GOMP_SPINCOUNT=300000 is libgomp's
  unset default (a ~3 ms spin before sleeping), where ACTIVE alone would spin
  for minutes.
- busy-auto: beside the busy process; the new default: --threads auto with
  the short spin.
- busy-two: beside the busy process, 2 threads with the short spin: a job
  that started on a quiet machine (auto took both cores) when another
  arrives later, which `auto` cannot see.
- busy-passive: the same with OMP_WAIT_POLICY=PASSIVE (no spin at all).
- quiet-old, quiet-passive: nothing else running; what the old default and
  PASSIVE give on a quiet machine (--no-quiet-old leaves these out).

The rate excludes start-up: the training log prints a progress line after
every update, the timestamps of those lines as they arrive are the clock, and
timing starts two updates after the first dev evaluation (which spaCy runs
after update 0). Dev is cut to its first --dev-docs documents, so that
evaluation is short even under contention. Each condition stops after
--updates timed updates or --max-seconds, whichever comes first.

    python benchmarks/thread_contention.py

writes benchmarks/results/thread_contention.json (about 3-5 minutes on 2 cores).
"""
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, IO, List, Optional, Tuple

import typer

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "project"
DATASET = "uner_en_ewt"
RESULTS = Path(__file__).parent / "results"
# Variables that would change the thread choice of a child: each condition sets its own.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# libgomp without OMP_WAIT_POLICY: spin 300,000 rounds, then sleep (its env.c).
OLD_WAIT = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
# Updates after the first evaluation before the clock starts (allocator warm-up).
SKIPPED = 2
PROGRESS = re.compile(r"^\s*progress: step \d+")


@dataclass(frozen=True)
class Condition:
    """One measured setting: the thread option, the extra environment, and whether a busy process runs beside it."""

    name: str
    threads: str
    env: Dict[str, str] = field(default_factory=dict)
    busy: bool = False


CONDITIONS = {
    "quiet-auto": Condition("quiet-auto", "auto"),
    "busy-old": Condition("busy-old", "2", OLD_WAIT, busy=True),
    "busy-auto": Condition("busy-auto", "auto", busy=True),
    "quiet-old": Condition("quiet-old", "2", OLD_WAIT),
    "busy-two": Condition("busy-two", "2", busy=True),
    "busy-passive": Condition("busy-passive", "2", PASSIVE_WAIT, busy=True),
    "quiet-passive": Condition("quiet-passive", "2", PASSIVE_WAIT),
}


def ensure_corpus(corpus: Path) -> None:
    """Convert the demo corpus with project/scripts/prepare.py unless it is there.

    corpus (Path): project/corpus/uner_en_ewt.
    """
    if (corpus / "train.spacy").exists() and (corpus / "meta.json").exists():
        return
    print(f"converting {DATASET} into {corpus}", flush=True)
    subprocess.run([sys.executable, "scripts/prepare.py", DATASET, str(corpus)], cwd=PROJECT, check=True)


def short_dev_corpus(corpus: Path, folder: Path, dev_docs: int) -> Path:
    """A corpus folder with the same train split and the first `dev_docs` dev documents.

    The dev evaluation after update 0 is start-up, not training; a short dev
    keeps it from eating the time budget when the machine is contended.
    corpus (Path): the converted corpus.
    folder (Path): where the new corpus folder goes.
    dev_docs (int): dev documents kept.
    RETURNS (Path): the new corpus folder.
    """
    import spacy
    from spacy.tokens import DocBin

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.spacy", "meta.json"):
        (folder / name).symlink_to((corpus / name).resolve())
    vocab = spacy.blank("en").vocab
    docs = list(DocBin().from_disk(corpus / "dev.spacy").get_docs(vocab))[:dev_docs]
    DocBin(docs=docs, store_user_data=True).to_disk(folder / "dev.spacy")
    return folder


def child_environment(condition: Condition) -> Dict[str, str]:
    """The environment of one training process: no inherited thread settings, the condition's own.

    condition (Condition): the setting.
    RETURNS (Dict[str, str]): the environment.
    """
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **condition.env)
    return env


def read_lines(stream: IO[str], lines: "queue.Queue[Tuple[float, Optional[str]]]") -> None:
    """Put each line of `stream` on `lines` with its arrival time; None at the end."""
    for line in stream:
        lines.put((time.perf_counter(), line))
    lines.put((time.perf_counter(), None))


@dataclass
class Measurement:
    """What one condition gave: the thread line, the timed updates and their seconds."""

    threads_line: str = ""
    updates_timed: int = 0
    seconds: float = 0.0
    tail: List[str] = field(default_factory=list)

    @property
    def updates_per_second(self) -> Optional[float]:
        """The timed rate; None with fewer than one timed update."""
        return self.updates_timed / self.seconds if self.updates_timed and self.seconds > 0 else None


def watch(lines: "queue.Queue[Tuple[float, Optional[str]]]", updates: int, max_seconds: float, startup_timeout: float) -> Measurement:
    """Time the progress lines of one run until `updates` are timed or `max_seconds` pass.

    lines (queue.Queue): (arrival time, line) from read_lines.
    updates (int): updates to time.
    max_seconds (float): the longest the timing runs.
    startup_timeout (float): the longest to wait for the clock to start.
    RETURNS (Measurement): the timed updates.
    """
    result = Measurement()
    started = time.perf_counter()
    seen, clock_start, last = 0, None, None
    while True:
        now = time.perf_counter()
        if clock_start is None and now - started > startup_timeout:
            break
        if clock_start is not None and now - clock_start > max_seconds:
            break
        try:
            arrived, line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        result.tail = (result.tail + [line.rstrip()])[-30:]
        if line.startswith("torch threads:"):
            result.threads_line = line.strip()
        if not PROGRESS.match(line):
            continue
        seen += 1
        if seen == 1 + SKIPPED:
            clock_start = arrived
        elif clock_start is not None:
            last = arrived
            result.updates_timed = seen - 1 - SKIPPED
            if result.updates_timed >= updates:
                break
    if clock_start is not None and last is not None:
        result.seconds = last - clock_start
    return result


def stop(process: "subprocess.Popen[Any]") -> None:
    """End a process this script started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_condition(
    condition: Condition, corpus: Path, updates: int, max_seconds: float, startup_timeout: float
) -> Tuple[Measurement, List[str]]:
    """One training process under `condition`, beside a busy process if it asks for one.

    condition (Condition): the setting.
    corpus (Path): the corpus folder for train.py.
    updates (int): updates to time.
    max_seconds (float): the longest the timing runs.
    startup_timeout (float): the longest to wait for the first timed update.
    RETURNS (Tuple[Measurement, List[str]]): the measurement and the training command.
    """
    busy = None
    if condition.busy:
        # One single-threaded job holding a core, started first so that
        # `auto` sees it when it samples the machine.
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        with tempfile.TemporaryDirectory() as output:
            steps = updates + SKIPPED + 4
            command = [
                sys.executable, "scripts/train.py", str(corpus), output, "--stage", "1",
                "--max-steps", str(steps), "--eval-frequency", str(steps + 1), "--progress-every", "1",
                "--threads", condition.threads,
            ]
            process = subprocess.Popen(
                command, cwd=PROJECT, env=child_environment(condition), text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            lines: "queue.Queue[Tuple[float, Optional[str]]]" = queue.Queue()
            threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
            try:
                result = watch(lines, updates, max_seconds, startup_timeout)
            finally:
                stop(process)
    finally:
        if busy is not None:
            stop(busy)
    return result, command


def machine_info() -> Dict[str, Any]:
    """The machine and the load on it before the first condition.

    RETURNS (Dict[str, Any]): cores, affinity, CPU model, versions and busy cores.
    """
    from spacy_early_exit.threads import auto_threads

    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            "",
        )
    except OSError:
        pass
    choice = auto_threads()
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "spacy": version("spacy"),
        "busy_cores_at_start": choice.busy,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator rounded, or None where either is missing."""
    return round(numerator / denominator, 3) if numerator and denominator else None


def main(
    updates: int = typer.Option(40, help="Updates timed per condition"),
    max_seconds: float = typer.Option(90.0, help="Longest timing per condition (a slow condition stops early)"),
    startup_timeout: float = typer.Option(240.0, help="Longest wait for a condition's first timed update"),
    dev_docs: int = typer.Option(32, help="Dev documents for the evaluation after update 0"),
    quiet_old: bool = typer.Option(True, help="Also time the old default and PASSIVE on the quiet machine"),
    output: Path = typer.Option(RESULTS / "thread_contention.json", help="Results JSON"),
) -> None:
    names = ["quiet-auto", "busy-old", "busy-auto", "busy-two", "busy-passive"] + (["quiet-old", "quiet-passive"] if quiet_old else [])
    info = machine_info()
    if info["busy_cores_at_start"]:
        print(f"warning: {info['busy_cores_at_start']} core(s) busy before the first run; the quiet conditions are not quiet", flush=True)
    corpus = PROJECT / "corpus" / DATASET
    ensure_corpus(corpus)
    report: Dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/thread_contention.py", *sys.argv[1:]]),
        "machine": info,
        "corpus": f"project/corpus/{DATASET} (dev cut to {dev_docs} docs)",
        "updates_timed": updates,
        "max_seconds": max_seconds,
        "old_default": {"threads": 2, **OLD_WAIT},
        "new_default": {"threads": "auto", "GOMP_SPINCOUNT": "3000"},
        "conditions": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        short = short_dev_corpus(corpus, Path(folder) / DATASET, dev_docs)
        for name in names:
            condition = CONDITIONS[name]
            started = time.perf_counter()
            result, command = run_condition(condition, short, updates, max_seconds, startup_timeout)
            rate = result.updates_per_second
            print(f"{name}: {result.threads_line or 'no thread line'}; "
                  f"{rate if rate is None else round(rate, 3)} updates/s over {result.updates_timed} updates "
                  f"({time.perf_counter() - started:.0f} s in all)", flush=True)
            if rate is None:
                print("\n".join(result.tail), file=sys.stderr)
            report["conditions"][name] = {
                **asdict(condition),
                "threads_line": result.threads_line,
                "updates_per_second": round(rate, 3) if rate else None,
                "updates": result.updates_timed,
                "seconds": round(result.seconds, 2),
                "train_command": " ".join(command[1:]),
            }
    rates = {name: entry["updates_per_second"] for name, entry in report["conditions"].items()}
    report["ratios"] = {
        "busy-old / quiet-auto": ratio(rates.get("busy-old"), rates.get("quiet-auto")),
        "busy-auto / quiet-auto": ratio(rates.get("busy-auto"), rates.get("quiet-auto")),
        "busy-auto / busy-old": ratio(rates.get("busy-auto"), rates.get("busy-old")),
        "busy-two / quiet-auto": ratio(rates.get("busy-two"), rates.get("quiet-auto")),
        "busy-passive / quiet-auto": ratio(rates.get("busy-passive"), rates.get("quiet-auto")),
    }
    if quiet_old:
        report["ratios"]["quiet-old / quiet-auto"] = ratio(rates.get("quiet-old"), rates.get("quiet-auto"))
        report["ratios"]["quiet-passive / quiet-auto"] = ratio(rates.get("quiet-passive"), rates.get("quiet-auto"))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(json.dumps(report["ratios"], indent=2))
    print(f"Wrote {output}")


if __name__ == "__main__":
    typer.run(main)
