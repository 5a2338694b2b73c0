"""Progress of a run: documents, words and FLOPs so far, and the closing summary."""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Optional, Union


def _speedup_text(speedup: Optional[float]) -> str:
    # No FLOPs yet (or an empty input) has no speed-up to show.
    return f"{speedup:.2f}x" if speedup else "n/a"


def _duration(seconds: float) -> str:
    """A short duration for the progress line: 42s, 3m07s, 1h05m."""
    minutes, seconds = divmod(max(0, int(round(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class Progress:
    """Counts documents, words and FLOPs; reports to `stream` every `every` seconds.

    total (int): the number of input documents.
    stream (Optional[IO[str]]): where lines go (stderr by default); None = silent.
    every (float): seconds between progress lines.
    """

    total: int
    stream: Optional[IO[str]] = None
    every: float = 10.0
    docs: int = 0
    words: int = 0
    flops: int = 0
    full_flops: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_doc: Optional[float] = None
    # Where the current report window starts: the line shows the throughput
    # since the previous line, so a change in machine load shows at once.
    _last_report: float = 0.0
    _last_docs: int = 0
    _last_words: int = 0

    def __post_init__(self) -> None:
        self._last_report = self.started

    def add(self, annotation: Dict[str, Any]) -> None:
        """Count one annotated document; print a progress line when one is due.

        annotation (Dict[str, Any]): the document's annotation (RowSpec.annotate).
        """
        now = time.perf_counter()
        self.docs += 1
        self.words += len(annotation["exit_layers"])
        self.flops += annotation["flops"]
        self.full_flops += annotation["full_flops"]
        if self.first_doc is None:
            # The first window starts once the first document is back: start-up
            # (loading, Ray actors) is not throughput, and counting it made the
            # first ETA absurd (14 hours for a 40-second run).
            self.first_doc = self._last_report = now
            self._last_docs, self._last_words = self.docs, self.words
        if self.stream is not None and now - self._last_report >= self.every:
            print(f"annotate: {self.line(now)}", file=self.stream, flush=True)
            self._last_report, self._last_docs, self._last_words = now, self.docs, self.words

    @property
    def speedup(self) -> Optional[float]:
        """Corpus FLOPs speed-up so far: sum(full_flops) / sum(flops); None before any FLOPs."""
        return self.full_flops / self.flops if self.flops else None

    def line(self, now: Optional[float] = None) -> str:
        """The progress line: documents done, recent throughput, time left, FLOPs speed-up.

        The throughput is the one since the previous line (the run's average
        goes to the summary), and the time left follows from it.
        now (Optional[float]): time.perf_counter() of the report; None = now.
        RETURNS (str): the line.
        """
        seconds = max((now or time.perf_counter()) - self._last_report, 1e-9)
        docs_per_second = (self.docs - self._last_docs) / seconds
        words_per_second = (self.words - self._last_words) / seconds
        share = f" ({self.docs / self.total:.0%})" if self.total else ""
        left = self.total - self.docs
        eta = f"  ETA {_duration(left / docs_per_second)}" if left > 0 and docs_per_second > 0 else ""
        return (
            f"{self.docs:,}/{self.total:,} docs{share}  {docs_per_second:,.0f} docs/s  "
            f"{words_per_second:,.0f} words/s{eta}  FLOPs speed-up {_speedup_text(self.speedup)}"
        )

    def summary(self) -> Dict[str, Any]:
        """The run's figures; `startup_seconds` runs until the first document came back.

        RETURNS (Dict[str, Any]): documents, words, seconds, throughput and FLOPs.
        """
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "docs": self.docs,
            "words": self.words,
            "seconds": round(seconds, 3),
            "startup_seconds": round((self.first_doc or self.started) - self.started, 3),
            "docs_per_second": round(self.docs / seconds, 2),
            "words_per_second": round(self.words / seconds, 2),
            "flops": self.flops,
            "full_flops": self.full_flops,
            "speedup": round(self.speedup, 4) if self.speedup else None,
        }


def done_line(summary: Dict[str, Any], output: Union[str, Path]) -> str:
    """The closing line of a run, from its summary (the figures it returns, rounded as there).

    summary (Dict[str, Any]): Progress.summary() of the finished run.
    output (Union[str, Path]): OUTPUT.
    RETURNS (str): the line.
    """
    return (
        f"annotate: done: {summary['docs']:,} docs, {summary['words']:,} words in {summary['seconds']:.1f} s "
        f"({summary['docs_per_second']:,.0f} docs/s, {summary['words_per_second']:,.0f} words/s; "
        f"first doc after {summary['startup_seconds']:.1f} s); FLOPs speed-up {_speedup_text(summary['speedup'])}; "
        f"wrote {output}"
    )
