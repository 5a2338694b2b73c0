"""How an annotate run fails: its error types and one-line error summaries.

Every failure a user sees from ``annotate`` is one line: the command prints it
after "annotate: error:", and a Ray worker's error reaches the driver as
traceback text, of which only one line is worth keeping.
"""
import re

# The last line of a traceback names the original error: "ValueError: ...".
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class InputError(ValueError):
    """Malformed input; the message names the file and the line."""


class AnnotateError(RuntimeError):
    """A run that cannot go on: bad options, a pipeline that does not load, a failing batch."""


class PipelinePathError(AnnotateError):
    """PIPELINE is neither a pipeline folder nor an installed pipeline package; the message names it.

    Kept apart from other AnnotateErrors so that the command exits with status
    2, like every other command given a wrong pipeline path.
    """


def error_summary(err: BaseException) -> str:
    """'Type: message' on one line; for an error that wraps a traceback (spaCy's
    multiprocessing, Ray), the traceback's last line, which names the original.

    err (BaseException): the error to summarize.
    RETURNS (str): one line.
    """
    # Lazy: loading imports spaCy; by the time a run fails, it is loaded.
    from ..loading import config_error_fields

    fields = config_error_fields(err)
    if fields:  # spaCy's config errors end in the whole config: keep the fields only
        return f"{type(err).__name__}: {fields}"
    text = str(err).strip()
    last = text.splitlines()[-1].strip() if text else ""
    if "\n" in text and _EXCEPTION_LINE.match(last):
        return last
    return f"{type(err).__name__}: {' | '.join(line.strip() for line in text.splitlines() if line.strip())}"
