"""What a developer asks to take out: frames (tables of released values) and files.

A frame is a table with column names and rows, usually a ``sb.sql`` DataFrame, carrying
the ids of the releases it came from and any post-processing its author declares. It
leaves as CSV (``FrameItem.data``), and the checks see exactly those values. A file is a
name, a media type and bytes: CSV, Parquet, PNG, SVG, TXT or JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar

from .errors import ExportDummyError, ExportInputError

MEDIA_TYPES: dict[str, str] = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".parquet": "application/vnd.apache.parquet",
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Declared post-processing of released values (docs/exports.md#provenance).
POSTPROCESSING = ("round", "scale", "sum", "ratio")
_SCALE = re.compile(r"^scale:([-+]?\d+(\.\d+)?([eE][-+]?\d+)?)$")


def check_postprocessing(steps: Sequence[str]) -> tuple[str, ...]:
    out = []
    for step in steps:
        if not isinstance(step, str) or not (step in ("round", "sum", "ratio")
                                             or _SCALE.match(step)):
            raise ExportInputError(
                f"unknown post-processing {step!r}",
                "declare any of: round, sum, ratio, scale:<factor> (e.g. scale:100 for percent)")
        out.append(step)
    return tuple(out)


def scales(steps: Sequence[str]) -> list[float]:
    return [float(m.group(1)) for s in steps if (m := _SCALE.match(s))]


def plain(value: Any) -> Any:
    """A cell as JSON sees it: None, bool, int, finite float or text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return plain(value.item())
    return str(value)


def _csv_text(value: Any) -> str:
    v = plain(value)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ExportInputError(
            f"invalid item name {name!r}",
            "use 1-100 letters, digits, '.', '_' and '-', starting with a letter or digit")


DUMMY_PREFIX = "dummy-"  # release ids of answers from dummy data (sandbox.dummy)


def dummy_refusal(what: str) -> ExportDummyError:
    return ExportDummyError(
        f"{what} comes from dummy data: dummy results describe no one and never leave",
        "run the same query for real (without dummy=True), check it, then export that result")


def _release_ids(ids: Sequence[str]) -> tuple[str, ...]:
    for r in ids:
        if not isinstance(r, str) or not RELEASE_ID_RE.match(r):
            raise ExportInputError(f"invalid release id {r!r}",
                                   "use the release id of a sb.sql result (df.attrs['release'])")
        if r.startswith(DUMMY_PREFIX):
            raise dummy_refusal(f"release {r}")
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class FrameItem:
    """A table of values; leaves as ``<name>.csv``."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    release_ids: tuple[str, ...] = ()
    postprocessing: tuple[str, ...] = ()
    kind: ClassVar[str] = "frame"

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        object.__setattr__(self, "rows", tuple(tuple(plain(v) for v in r) for r in self.rows))
        object.__setattr__(self, "release_ids", _release_ids(self.release_ids))
        object.__setattr__(self, "postprocessing", check_postprocessing(self.postprocessing))
        for i, r in enumerate(self.rows):
            if len(r) != len(self.columns):
                raise ExportInputError(f"frame '{self.name}': row {i + 1} has {len(r)} values "
                                       f"for {len(self.columns)} columns",
                                       "send every row with one value per column")

    @classmethod
    def from_pandas(cls, name: str, df: Any, release_ids: Sequence[str] = (),
                    postprocessing: Sequence[str] = ()) -> FrameItem:
        """From a DataFrame (duck-typed: pandas is not a dependency of the core); a
        ``sb.sql`` frame brings its release id in ``df.attrs['release']``."""
        ids = list(release_ids)
        attrs = getattr(df, "attrs", None) or {}
        rel = attrs.get("release") or {}
        if attrs.get("dummy") or rel.get("dummy"):
            raise dummy_refusal(f"frame {name!r}")
        if not ids and rel.get("release_id"):
            ids = [rel["release_id"]]
        return cls(name, tuple(df.columns), tuple(tuple(r) for r in df.itertuples(
            index=False, name=None)), tuple(ids), tuple(postprocessing))

    @property
    def filename(self) -> str:
        return self.name if self.name.lower().endswith(".csv") else f"{self.name}.csv"

    @property
    def media_type(self) -> str:
        return "text/csv"

    @cached_property
    def data(self) -> bytes:
        """The CSV that leaves: a header, then one line per row (floats in shortest form)."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow([_csv_text(v) for v in r])
        return out.getvalue().encode()


@dataclass(frozen=True)
class FileItem:
    """A file as uploaded; its type comes from the name's extension and is checked
    against the declared media type and the content."""

    name: str
    data: bytes = field(repr=False)
    media_type: str = ""
    release_ids: tuple[str, ...] = ()
    postprocessing: tuple[str, ...] = ()
    kind: ClassVar[str] = "file"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.data, bytes):
            raise ExportInputError(f"file '{self.name}' has no bytes", "send the file content")
        if not self.media_type:
            object.__setattr__(self, "media_type", MEDIA_TYPES.get(self.extension, ""))
        object.__setattr__(self, "release_ids", _release_ids(self.release_ids))
        object.__setattr__(self, "postprocessing", check_postprocessing(self.postprocessing))

    @property
    def extension(self) -> str:
        dot = self.name.rfind(".")
        return self.name[dot:].lower() if dot > 0 else ""

    @property
    def filename(self) -> str:
        return self.name


ExportItem = FrameItem | FileItem
