"""Compact row storage for view results: tuples in column order, read as dicts or as a DataFrame."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload


class ViewTable(Sequence[dict[str, Any]]):
    """Rows of one view kept as tuples (a fraction of the memory of dicts). Iterating or indexing gives
    dicts, so code written for ``list[dict]`` keeps working; :meth:`frame` builds a DataFrame directly."""

    def __init__(self, columns: Sequence[str], rows: Iterable[tuple[Any, ...]] = ()) -> None:
        self.columns = list(columns)
        self.tuples: list[tuple[Any, ...]] = list(rows)

    def extend_tuples(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.tuples.extend(rows)

    def __len__(self) -> int:
        return len(self.tuples)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [dict(zip(self.columns, t, strict=True)) for t in self.tuples[i]]
        return dict(zip(self.columns, self.tuples[i], strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cols = self.columns
        for t in self.tuples:
            yield dict(zip(cols, t, strict=True))

    def frame(self) -> Any:
        """A pandas DataFrame with :attr:`columns` (no dicts built on the way)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.tuples, columns=self.columns)

    def __repr__(self) -> str:
        return f"ViewTable({len(self.tuples)} rows x {self.columns})"
