"""`VariableStore`: the live, mutable arrays of a graph's variables, by name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphcError, GraphNameError, ShapeError


class VariableStore(Mapping[str, np.ndarray]):
    """The live values of a graph's variables, by name.

    Assigning ``g.variables["w"] = arr`` copies `arr` into the existing array (after a
    shape/dtype check), so compiled executables that bound the array keep seeing it.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        # Bumped whenever an array is (re)bound, so executables know to re-read pointers.
        self.version = 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise GraphNameError(f"no variable named {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def __setitem__(self, name: str, value: Any) -> None:
        current = self[name]
        array = np.asarray(value)
        if array.shape != current.shape:
            raise ShapeError(
                f"variable {name!r}: expected shape {current.shape}, got {array.shape}"
            )
        if array.dtype != current.dtype and not np.can_cast(array, current.dtype, "same_kind"):
            raise DTypeError(f"variable {name!r}: expected {current.dtype}, got {array.dtype}")
        np.copyto(current, array, casting="same_kind")

    def bind(self, name: str, array: np.ndarray) -> None:
        """Attach `array` itself (no copy) as the value of variable `name`.

        Executables compiled from the graph follow a rebinding: they read and update the new
        array from their next call on (they re-read the store when its `version` changes).
        The array must be a C-contiguous, writable, aligned numpy array (compiled code reads
        and writes it in place) of the shape and dtype of the array it replaces, if any.
        Raises ShapeError / DTypeError / GraphcError otherwise. To change values without
        rebinding, assign: ``g.variables[name] = value`` copies into the bound array.
        """
        if not isinstance(array, np.ndarray):
            raise GraphcError(f"variable {name!r}: bind takes a numpy array, got "
                              f"{type(array).__name__}")
        current = self._arrays.get(name)
        if current is not None:
            if array.shape != current.shape:
                raise ShapeError(f"variable {name!r}: expected shape {current.shape}, got "
                                 f"{array.shape}")
            if array.dtype != current.dtype:
                raise DTypeError(f"variable {name!r}: expected {current.dtype}, got "
                                 f"{array.dtype}")
        flags = array.flags
        if not (flags.c_contiguous and flags.writeable and flags.aligned):
            raise GraphcError(f"variable {name!r}: bind needs a C-contiguous, writable, aligned "
                              "array (compiled code updates it in place); pass "
                              "np.ascontiguousarray(a) or a copy")
        self._arrays[name] = array
        self.version += 1
