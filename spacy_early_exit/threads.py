"""One rule for the torch thread count of every command and training script.

`auto` (the default everywhere) asks for the cores that are not busy when the
process starts: on a 2-core machine that another single-threaded job shares,
two torch threads make training 10-20x slower, while one thread costs only the
second core. The busy cores come from /proc/stat over a short sleep (so this
process does not count itself), else from the load average.
"""
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Dict, Iterator, Optional, Sequence, Tuple, Union

# Environment variables a user or a job script sets to cap a process's threads.
CAP_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
AUTO = "auto"
# A thread setting as the command lines take it: a count (0 = torch's default) or "auto".
ThreadSetting = Union[int, str]
PROC_STAT = "/proc/stat"
# Seconds between the two /proc/stat samples: long enough to average out a
# scheduler tick (10 ms) and short enough not to be felt at start-up.
SAMPLE_SECONDS = 0.4
# A core counts as busy from this share of its time on: a job that holds a
# core 60% of the time still makes a second torch thread wait for it.
BUSY_SHARE = 0.6


def environment_cap() -> Optional[int]:
    """The smallest positive thread count set in OMP_NUM_THREADS / MKL_NUM_THREADS, or None."""
    values = []
    for name in CAP_VARIABLES:
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            values.append(value)
    return min(values) if values else None


def set_torch_threads(requested: int, capped: bool = True) -> int:
    """Set torch's intra-op threads to `requested`, capped by the environment.

    A job script that exports OMP_NUM_THREADS=1 (benchmarks/train_corpus.sh
    does, to share 2 cores between two jobs) means it: a project default of 2
    threads must not override it, since more threads than free cores makes
    training many times slower.

    requested (int): the thread count asked for; 0 keeps torch's default.
    capped (bool): apply the environment's cap. False for a count set per
        worker of one run (annotate's --threads-per-worker, a Ray actor's CPU
        share), which is that run's own decision about its cores.
    RETURNS (int): the thread count torch now uses.
    """
    import torch

    if requested < 0:
        raise ValueError(f"threads must be >= 0; got {requested}")
    cap = environment_cap() if capped else None
    if requested:
        torch.set_num_threads(min(requested, cap) if cap else requested)
    return torch.get_num_threads()


@contextmanager
def torch_threads(requested: Optional[int], capped: bool = True) -> Iterator[int]:
    """torch's intra-op threads set as set_torch_threads sets them, for the block only.

    The previous count comes back afterwards, so a library call (annotate run
    from Python) leaves the caller's torch setting as it found it.

    requested (Optional[int]): the thread count; None or 0 keeps torch's setting.
    capped (bool): apply the environment's cap (see set_torch_threads).
    YIELDS (int): the thread count torch uses in the block.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        yield set_torch_threads(requested or 0, capped=capped)
    finally:
        torch.set_num_threads(previous)


def parse_threads(value: Union[int, str]) -> ThreadSetting:
    """A thread setting from the command line: "auto" or a count >= 0.

    value (Union[int, str]): "auto" (any case), or an integer or its text.
    RETURNS (ThreadSetting): AUTO or the count.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be 'auto' or an integer >= 0; got {value!r}") from None
    if count < 0:
        raise ValueError(f"threads must be 'auto' or an integer >= 0; got {value!r}")
    return count


def parse_cpu_times(text: str) -> Dict[int, Tuple[int, int]]:
    """Per-core (busy, total) jiffies from the text of /proc/stat.

    Idle and iowait are the idle time; guest time is already inside user and
    nice, so only the first eight fields add up to the total.
    text (str): the file's content.
    RETURNS (Dict[int, Tuple[int, int]]): core number -> (busy, total).
    """
    times: Dict[int, Tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        fields = [int(field) for field in rest.split()[:8]]
        total = sum(fields)
        idle = sum(fields[3:5])
        times[int(name[3:])] = (total - idle, total)
    return times


def busy_cores(
    before: Dict[int, Tuple[int, int]], after: Dict[int, Tuple[int, int]], cores: Optional[Sequence[int]] = None
) -> float:
    """The number of cores kept busy between two /proc/stat samples.

    before (Dict[int, Tuple[int, int]]): parse_cpu_times of the first sample.
    after (Dict[int, Tuple[int, int]]): parse_cpu_times of the second sample.
    cores (Optional[Sequence[int]]): the cores to count (this process's
        affinity); None = every core in both samples.
    RETURNS (float): the sum of each core's busy share, e.g. 1.02.
    """
    wanted = set(before) & set(after) if cores is None else set(cores) & set(before) & set(after)
    load = 0.0
    for core in wanted:
        busy = after[core][0] - before[core][0]
        total = after[core][1] - before[core][1]
        if total > 0:
            load += min(max(busy / total, 0.0), 1.0)
    return load


def count_busy(load: float) -> int:
    """Whole busy cores from a load: a core counts once its share reaches BUSY_SHARE.

    load (float): busy cores as a sum of shares (busy_cores) or a load average.
    RETURNS (int): the busy cores.
    """
    return int(max(load, 0.0) + 1.0 - BUSY_SHARE)


def allowed_cores() -> Tuple[int, ...]:
    """The cores this process may run on (its affinity), or all of them.

    RETURNS (Tuple[int, ...]): the core numbers.
    """
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` saw: the cores this process may use, how many were busy, and how it knew.

    cores (int): the cores of this process's affinity.
    busy (int): those busy at start.
    source (str): "/proc/stat", "load average" or "none".
    """

    cores: int
    busy: int
    source: str

    @property
    def threads(self) -> int:
        """The free cores, at least 1."""
        return max(1, self.cores - self.busy)


def measure_busy(cores: Sequence[int], seconds: float = SAMPLE_SECONDS) -> Tuple[int, str]:
    """Busy cores among `cores`, sampled over `seconds` of sleep.

    cores (Sequence[int]): the cores to look at.
    seconds (float): the sampling interval; this process sleeps through it.
    RETURNS (Tuple[int, str]): busy cores and where the figure came from.
    """
    try:
        with open(PROC_STAT, encoding="ascii") as file:
            before = parse_cpu_times(file.read())
        time.sleep(seconds)
        with open(PROC_STAT, encoding="ascii") as file:
            after = parse_cpu_times(file.read())
        if before and after:
            return min(count_busy(busy_cores(before, after, cores)), len(cores)), PROC_STAT
    except OSError:
        pass
    try:
        # The one-minute load average counts runnable jobs machine-wide,
        # whatever their affinity: the best guess where /proc/stat is missing.
        return min(count_busy(os.getloadavg()[0]), len(cores)), "load average"
    except (AttributeError, OSError):
        return 0, "none"


def auto_threads(seconds: float = SAMPLE_SECONDS) -> AutoChoice:
    """The cores not busy at start, at least 1 (before the environment's cap).

    seconds (float): the /proc/stat sampling interval.
    RETURNS (AutoChoice): the cores, the busy ones and the source.
    """
    cores = allowed_cores()
    busy, source = measure_busy(cores, seconds)
    return AutoChoice(cores=len(cores), busy=busy, source=source)


def apply_threads(setting: ThreadSetting, capped: bool = True, stream: Optional[IO[str]] = sys.stderr) -> int:
    """Set torch's threads from a command-line setting and say what was chosen, once.

    setting (ThreadSetting): "auto", a count, or 0 for torch's default.
    capped (bool): apply the environment's cap (see set_torch_threads).
    stream (Optional[IO[str]]): where the line goes, e.g.
        "torch threads: 1 (auto: 1 of 2 cores busy)"; None = silent.
    RETURNS (int): the thread count torch now uses.
    """
    setting = parse_threads(setting)
    requested, note = auto_request(capped) if setting == AUTO else (int(setting), "")
    threads = set_torch_threads(requested, capped=capped)
    if stream is not None:
        print(f"torch threads: {threads}{note}", file=stream, flush=True)
    return threads


def auto_request(capped: bool = True) -> Tuple[int, str]:
    """The thread count `auto` asks for, and the note that says why.

    capped (bool): whether the environment's cap applies: a cap of 1 (or a
        single allowed core) gives 1 thread whatever the load, so the machine
        is not sampled and no start-up time is spent.
    RETURNS (Tuple[int, str]): the count and e.g. " (auto: 1 of 2 cores busy)".
    """
    cap = environment_cap() if capped else None
    cores = allowed_cores()
    if len(cores) == 1:
        return 1, " (auto: one core allowed)"
    if cap == 1:
        return 1, f" (auto: capped at 1 by {'/'.join(CAP_VARIABLES)})"
    choice = auto_threads()
    return choice.threads, describe_choice(choice, cap)


def describe_choice(choice: AutoChoice, cap: Optional[int] = None) -> str:
    """The note after the count: how `auto` chose it and what capped it.

    choice (AutoChoice): what auto saw.
    cap (Optional[int]): the environment's cap, if it applies.
    RETURNS (str): e.g. " (auto: 1 of 2 cores busy)".
    """
    note = f"auto: {choice.busy} of {choice.cores} cores busy"
    if choice.source != PROC_STAT:
        note += f", from the {choice.source}"
    if cap is not None and cap < choice.threads:
        note += f"; capped at {cap} by {'/'.join(CAP_VARIABLES)}"
    return f" ({note})"
