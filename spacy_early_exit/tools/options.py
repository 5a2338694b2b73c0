"""Command-line option values shared by the CLI and the benchmark scripts."""
from typing import Callable, List, TypeVar

Number = TypeVar("Number", int, float)


def parse_numbers(text: str, kind: Callable[[str], Number], option: str) -> List[Number]:
    """A comma-separated option ("2,3,4") as numbers; fails naming the option.

    text (str): the option's value.
    kind (Callable[[str], Number]): int or float.
    option (str): the option name, for the error.
    """
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers; got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty")
    return values
