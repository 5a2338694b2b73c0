"""A training logger that reports progress between dev evaluations.

spaCy's console logger prints one table row per evaluation and nothing in
between. On a shared or slow machine a hundred updates can take many minutes,
and silence looks like a hang. `ProgressLogger.v1` keeps spaCy's table and adds
one line every `progress_every` updates with the recent update rate and an
estimate of the time left to `training.max_steps` at that rate.
"""
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable, Deque, Dict, Optional, Tuple, Union

from spacy.language import Language

LogStep = Callable[[Optional[Dict[str, Any]]], None]
Finalize = Callable[[], None]
Logger = Callable[[Language, IO, IO], Tuple[LogStep, Finalize]]
# Updates the recent rate (and so the ETA) is taken over.
RATE_WINDOW = 20


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


def evaluations_left(done: int, max_steps: int, frequency: int) -> int:
    """Dev evaluations still to come: spaCy evaluates update indices 0, f, 2f, ... up to max_steps.

    done (int): updates done; the next one has index `done` (spaCy counts from 0).
    max_steps (int): the last update index spaCy runs.
    frequency (int): training.eval_frequency (<= 0: no evaluations counted).
    RETURNS (int): the evaluations left.
    """
    if frequency <= 0 or done > max_steps:
        return 0
    return max_steps // frequency - (done - 1) // frequency


class Progress:
    """Counts updates and formats the progress line.

    The rate and the ETA come from the last `window` updates, so a change in
    machine load (another job taking a core) shows within a few lines; an
    average since the start took most of the run to notice it. Updates with a
    dev evaluation are kept out of the rate, and the evaluations still to come
    are added to the ETA at the duration of the last one.
    max_steps (int): the update budget (0 = none: no ETA).
    eval_frequency (int): updates between dev evaluations (0 = none counted).
    clock (Callable[[], float]): the time source, replaceable in tests.
    window (int): the updates the recent rate is taken over.
    """

    def __init__(
        self,
        max_steps: int,
        clock: Callable[[], float] = time.perf_counter,
        eval_frequency: int = 0,
        window: int = RATE_WINDOW,
    ) -> None:
        self.max_steps = max_steps
        self.eval_frequency = eval_frequency
        self.clock = clock
        self.started = clock()
        self.last_tick = self.started
        self.step = 0
        self.recent: Deque[float] = deque(maxlen=window)
        self.eval_seconds = 0.0

    def tick(self, evaluated: bool = False) -> None:
        """Record one update.

        evaluated (bool): the update was followed by a dev evaluation (and a checkpoint).
        """
        now = self.clock()
        seconds, self.last_tick = now - self.last_tick, now
        self.step += 1
        if evaluated:
            # The interval holds one update as well; take its recent duration off.
            self.eval_seconds = max(0.0, seconds - (self.seconds_per_update() or 0.0))
        else:
            self.recent.append(seconds)

    def seconds_per_update(self) -> Optional[float]:
        """The mean duration of the recent updates without an evaluation; None before any."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def seconds_left(self) -> Optional[float]:
        """The estimated time to max_steps: updates at the recent rate plus the evaluations left.

        RETURNS (Optional[float]): seconds; None without a budget or a measured update.
        """
        per_update = self.seconds_per_update()
        if self.max_steps <= 0 or per_update is None:
            return None
        updates = max(self.max_steps - self.step, 0)
        return updates * per_update + evaluations_left(self.step, self.max_steps, self.eval_frequency) * self.eval_seconds

    def line(self) -> str:
        """The recent update rate and the estimate of the time left.

        RETURNS (str): e.g. "step 150/600 (25%) | 2.41 updates/s | ETA 3m06s (to max_steps)".
        """
        per_update = self.seconds_per_update()
        rate = f"{1 / max(per_update, 1e-9):.2f}" if per_update is not None else "?"
        if self.max_steps > 0:
            done = min(self.step, self.max_steps)
            left = self.seconds_left()
            eta = format_duration(left) if left is not None else "?"
            head = f"step {done}/{self.max_steps} ({100 * done // self.max_steps}%)"
            return f"{head} | {rate} updates/s | ETA {eta} (to max_steps)"
        return f"step {self.step} | {rate} updates/s | elapsed {format_duration(self.clock() - self.started)}"


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
        training = nlp.config["training"]
        progress = Progress(int(training.get("max_steps") or 0), eval_frequency=int(training.get("eval_frequency") or 0))

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            # spaCy calls this once per update: with the scores after an
            # evaluation, with None otherwise.
            progress.tick(evaluated=info is not None)
            if info is None and console_output and progress_every and progress.step % progress_every == 0:
                stdout.write(f"  progress: {progress.line()}\n")
                stdout.flush()
            log_console(info)

        return log_step, finalize

    return setup
