"""Loading a saved component, with errors that say which file and what is wrong.

spaCy reads a missing cfg as {} and TrainablePipe fails on a missing weights
file with a bare FileNotFoundError, or on a truncated one deep inside msgpack;
a user then cannot tell a typo from a corrupt download.
"""
from pathlib import Path
from typing import Any, Iterable

from ..layers.architecture import get_shim


class CheckedLoading:
    """Mixin for TrainablePipe subclasses: `from_bytes`/`from_disk` that name
    the missing or broken part, then check the weights fit the labels.

    Subclasses provide `name`, `model`, `labels`, `class_names` and `set_policy`.
    """

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> Any:
        try:
            super().from_bytes(bytes_data, exclude=exclude)
        except Exception as err:
            raise ValueError(self._load_error("its serialized bytes", err)) from err
        self._check_loaded()
        return self

    def from_disk(self, path: Any, *, exclude: Iterable[str] = tuple()) -> Any:
        # spaCy reads a missing cfg as {} and TrainablePipe fails on a missing
        # weights file with a bare FileNotFoundError: name what is missing.
        for part, holds in (("model", "weights"), ("cfg", "labels")):
            if part not in exclude and not (Path(path) / part).is_file():
                raise ValueError(
                    f"Component '{self.name}': the file {Path(path) / part} (its {holds}) is "
                    "missing; the pipeline folder is incomplete"
                )
        try:
            super().from_disk(path, exclude=exclude)
        except Exception as err:
            raise ValueError(self._load_error(str(path), err)) from err
        self._check_loaded()
        return self

    def _load_error(self, source: str, err: Exception) -> str:
        return (
            f"Component '{self.name}' could not be loaded from {source}: a file is truncated, "
            f"corrupt or from another version ({type(err).__name__}: {err})"
        )

    def _check_loaded(self) -> None:
        encoder = get_shim(self.model).encoder
        if encoder is None:
            return
        if encoder.n_classes != len(self.class_names):
            raise ValueError(
                f"Component '{self.name}': the saved off-ramps predict {encoder.n_classes} "
                f"classes but its labels {list(self.labels)} need {len(self.class_names)}; "
                "the pipeline folder is inconsistent"
            )
        self.model.attrs["n_classes"] = encoder.n_classes
        self.set_policy(self._policy)
