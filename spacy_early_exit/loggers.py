"""A training logger that reports progress between dev evaluations.

spaCy's console logger prints one table row per evaluation and nothing in
between. On a shared or slow machine a hundred updates can take many minutes,
and silence looks like a hang. `ProgressLogger.v1` keeps spaCy's table and adds
one line every `progress_every` updates with the recent update rate and an
estimate of the time left to `training.max_steps`.
"""
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple, Union

from spacy.language import Language

LogStep = Callable[[Optional[Dict[str, Any]]], None]
Finalize = Callable[[], None]
Logger = Callable[[Language, IO, IO], Tuple[LogStep, Finalize]]


def format_duration(seconds: float) -> str:
    """A short human duration: 42s, 3m07s, 1h05m.

    seconds (float): the duration, >= 0.
    RETURNS (str): the duration in the largest two units that matter.
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts updates and formats the progress line.

    max_steps (int): the update budget (0 = none: no ETA).
    clock (Callable[[], float]): the time source, replaceable in tests.
    """

    def __init__(self, max_steps: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_steps = max_steps
        self.clock = clock
        self.started = clock()
        self.last_time = self.started
        self.last_step = 0
        self.step = 0

    def tick(self) -> None:
        """Record one update."""
        self.step += 1

    def line(self) -> str:
        """The progress since the last line, and the estimate of the time left.

        The rate shown is the recent one (since the previous line), which follows
        a change in machine load; the ETA uses the average since the start, which
        includes the time spent on dev evaluations and so does not undershoot.
        RETURNS (str): e.g. "step 150/600 (25%) | 2.41 updates/s | ETA 3m06s".
        """
        now = self.clock()
        recent = (self.step - self.last_step) / max(now - self.last_time, 1e-9)
        overall = self.step / max(now - self.started, 1e-9)
        self.last_time, self.last_step = now, self.step
        if self.max_steps > 0:
            done = min(self.step, self.max_steps)
            left = (self.max_steps - done) / overall if overall > 0 else float("inf")
            eta = format_duration(left) if left != float("inf") else "?"
            head = f"step {done}/{self.max_steps} ({100 * done // self.max_steps}%)"
            return f"{head} | {recent:.2f} updates/s | ETA {eta} (to max_steps)"
        return f"step {self.step} | {recent:.2f} updates/s | elapsed {format_duration(now - self.started)}"


def make_progress_logger(
    progress_every: int = 25,
    console_output: bool = True,
    output_file: Optional[Union[str, Path]] = None,
) -> Logger:
    """Registered as "spacy-early-exit.ProgressLogger.v1" (entry point `spacy_loggers`).

    progress_every (int): print a progress line every this many updates (0 = never).
    console_output (bool): passed to spaCy's ConsoleLogger: print its table.
    output_file (Optional[Union[str, Path]]): passed to spaCy's ConsoleLogger: also
        write the evaluation rows to this file.
    RETURNS (Logger): the logger setup function spaCy's training loop calls.
    """
    from spacy.training.loggers import console_logger_v3

    if isinstance(progress_every, bool) or not isinstance(progress_every, int) or progress_every < 0:
        raise ValueError(f"progress_every must be an integer >= 0; got {progress_every!r}")
    console = console_logger_v3(progress_bar=None, console_output=console_output, output_file=output_file)

    def setup(nlp: Language, stdout: IO = sys.stdout, stderr: IO = sys.stderr) -> Tuple[LogStep, Finalize]:
        log_console, finalize = console(nlp, stdout, stderr)
        progress = Progress(int(nlp.config["training"].get("max_steps") or 0))

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            # spaCy calls this once per update: with the scores after an
            # evaluation, with None otherwise.
            progress.tick()
            if info is None and console_output and progress_every and progress.step % progress_every == 0:
                stdout.write(f"  progress: {progress.line()}\n")
                stdout.flush()
            log_console(info)

        return log_step, finalize

    return setup
