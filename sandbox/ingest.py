"""Ingest: stream a CSV or Parquet source, check it against its spec, encrypt, register.

Memory stays bounded (record batches, row groups of at most ``row_group_size``
rows). Nothing is registered until every file is written and durable; any
failure removes what was written.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .catalog import Catalog, DatasetVersion
from .errors import EmptyUnitError, IngestError, MalformedRowError, TypeMismatchError
from .fsutil import fsync_dir
from .identifier_index import home_of, index_path, writer_for
from .keys import Kms
from .spec import DatasetSpec
from .vault import EncryptedWriter, FileRef, WrittenFile

Progress = Callable[[int], None]  # rows written so far
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
STAGING = ".staging"


def ingest(catalog: Catalog, kms: Kms, source: Path, spec: DatasetSpec,
           progress: Progress | None = None, row_group_size: int = 1_000_000,
           rows_per_file: int = 5_000_000) -> DatasetVersion:
    """Encrypt ``source`` as a new version of ``spec.name``; returns the registered version."""
    if not source.is_file():
        raise IngestError(f"source file not found: {source}", "check the path")
    kms.active_key_id()  # fail before any work when keys are missing
    storage_id = uuid.uuid4().hex
    staging = catalog.vault_dir / STAGING / storage_id
    final = catalog.storage_dir(spec.name, storage_id)
    # The keyed-hash index of the identifier values (never in clear), for the airlock's scan.
    home = home_of(catalog)
    index = writer_for(home, kms, spec.identifier_columns)
    index_file = index_path(home, spec.name, storage_id)
    staging.mkdir(parents=True, mode=0o700)
    writer: EncryptedWriter | None = None
    try:
        written: list[WrittenFile] = []
        for table in _row_groups(_source_batches(source, spec, progress), row_group_size):
            if writer is not None and writer.rows + table.num_rows > rows_per_file:
                written.append(writer.close())
                writer = None
            if writer is None:
                name = f"part-{len(written):05d}.parquet"
                writer = EncryptedWriter(staging / name, FileRef(spec.name, storage_id, name),
                                         spec.arrow_schema(), spec.identifier_columns, kms,
                                         row_group_size)
            writer.write(table)
            index.add_table(table)
        if writer is None:
            raise IngestError(f"{source} has no data rows", "ingest a file with at least one row")
        written.append(writer.close())
        writer = None
        fsync_dir(staging)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(staging, final)
        fsync_dir(final.parent)
        index.write(index_file)
        catalog.register(spec, storage_id, written)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        index_file.unlink(missing_ok=True)
        raise
    return catalog.get(spec.name)


def _row_groups(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup source batches into row groups of ``size`` rows (the last may be smaller)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _source_batches(source: Path, spec: DatasetSpec,
                    progress: Progress | None) -> Iterator[pa.RecordBatch]:
    suffix = source.suffix.lower()
    if suffix in CSV_SUFFIXES:
        batches = _csv_batches(source, spec, progress)
    elif suffix in PARQUET_SUFFIXES:
        batches = _parquet_batches(source, spec, progress)
    else:
        raise IngestError(f"unsupported source type '{suffix}' for {source}",
                          "provide a .csv or .parquet file")
    unit = spec.privacy_unit
    for batch in batches:
        if unit is not None and _empty_units(batch.column(unit)):
            raise _empty_unit_error(source, spec, unit)
        yield batch


def _empty_units(col: pa.Array) -> int:
    """Rows without a privacy unit: null, or text that is empty or only blanks. Each would
    be one more row of a single, shared unit, so bounds per unit would be wrong."""
    empty = int(col.null_count)
    if pa.types.is_string(col.type):
        blank = pc.equal(pc.utf8_trim_whitespace(col), "")
        empty += int(pc.sum(pc.fill_null(blank, False)).as_py() or 0)
    return empty


def _empty_unit_error(source: Path, spec: DatasetSpec, unit: str) -> EmptyUnitError:
    """Where the first row without a unit is and how many there are (a second pass over
    the unit column only, on the failure path)."""
    if source.suffix.lower() in CSV_SUFFIXES:
        total, first = 0, None
        with open(source, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            at = header.index(unit)
            for row in reader:
                if row and len(row) > at and not row[at].strip():
                    total += 1
                    first = first or reader.line_num
        where = f"{source}:{first}"
    else:
        column = pq.read_table(str(source), columns=[unit]).column(unit).combine_chunks()
        total = _empty_units(column)
        blank = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), "")) \
            if pa.types.is_string(column.type) else pc.is_null(column)
        first_row = pc.index(pc.fill_null(blank, True), True).as_py() + 1
        where = f"{source}: row {first_row}"
    more = f" ({total - 1:,} more row(s) like it)" if total > 1 else ""
    return EmptyUnitError(
        f"{where}: the privacy unit '{unit}' is empty{more}; rows without a unit would all "
        "count as one person or entity",
        f"fill in '{unit}' for every row, or remove the rows that have none, and ingest again")


def _check_columns(source: Path, names: list[str], spec: DatasetSpec) -> None:
    declared = [c.name for c in spec.columns]
    extra = [n for n in names if n not in declared]
    missing = [n for n in declared if n not in names]
    if len(set(names)) != len(names):
        raise IngestError(f"{source}: the header repeats a column name",
                          "give every column a unique name")
    if extra:
        raise IngestError(
            f"{source}: column(s) {', '.join(extra)} are not described in the spec",
            "add them to the spec with a role (identifier if they must never be analysed), "
            "or remove them from the source",
        )
    if missing:
        raise IngestError(
            f"the spec declares column(s) {', '.join(missing)} that {source} does not have",
            "fix the column names in the spec or the source",
        )


def _parquet_batches(source: Path, spec: DatasetSpec,
                     progress: Progress | None) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(str(source))
        names = pf.schema_arrow.names
    except (OSError, pa.ArrowException):
        raise IngestError(f"{source} is not a readable Parquet file",
                          "check that the file is complete and not encrypted") from None
    _check_columns(source, names, spec)
    target = spec.arrow_schema()
    rows = 0
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i, columns=target.names)
        except (OSError, pa.ArrowException):
            raise IngestError(f"{source}: row group {i} cannot be read",
                              "the file is damaged; export it again") from None
        arrays = []
        for field in target:
            col = table.column(field.name)
            try:
                arrays.append(col if col.type == field.type else col.cast(field.type, safe=True))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TypeMismatchError(
                    f"{source}: column '{field.name}' has type {col.type}, which does not fit the "
                    f"spec type {spec.column(field.name).type} (rows {rows + 1}-"
                    f"{rows + table.num_rows})",
                    "fix the type in the spec or convert the column in the source",
                ) from None
        table = pa.Table.from_arrays(arrays, schema=target)
        rows += table.num_rows
        yield from table.to_batches()
        if progress:
            progress(rows)


def _csv_batches(source: Path, spec: DatasetSpec,
                 progress: Progress | None) -> Iterator[pa.RecordBatch]:
    try:
        # utf-8-sig: spreadsheet programs start "CSV UTF-8" with a byte-order mark
        with open(source, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise IngestError(f"{source}:1: the file is not UTF-8 text",
                          "convert the CSV to UTF-8") from None
    if not header:
        raise IngestError(f"{source}: the file is empty", "provide a CSV with a header row")
    _check_columns(source, [h.strip() for h in header], spec)
    types = {c.name: c.arrow_type for c in spec.columns}
    rows = 0
    try:
        reader = pacsv.open_csv(
            str(source),
            read_options=pacsv.ReadOptions(block_size=16 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=[c.name for c in spec.columns],
                strings_can_be_null=False, true_values=["true", "1"],
                false_values=["false", "0"],
            ),
        )
        for batch in reader:
            rows += batch.num_rows
            yield batch
            if progress:
                progress(rows)
    except pa.ArrowException:
        raise _diagnose_csv(source, spec) from None


def _diagnose_csv(source: Path, spec: DatasetSpec) -> IngestError:
    """Find the first bad line with a slow, exact pass (only on the failure path)."""
    checks: dict[str, Callable[[str], object]] = {
        "int16": int, "int32": int, "int64": int, "float64": float,
        "bool": _parse_bool, "date": dt.date.fromisoformat, "timestamp": dt.datetime.fromisoformat,
        "string": str,
    }
    with open(source, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        ranges = {"int16": 2**15, "int32": 2**31, "int64": 2**63}
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # pyarrow skips blank lines too
            if len(row) != len(header):
                return MalformedRowError(
                    f"{source}:{line}: expected {len(header)} fields, found {len(row)}",
                    "fix the row (quote fields that contain commas) and ingest again",
                )
            for name, value in zip(header, row, strict=True):
                ctype = spec.column(name).type
                if value == "" and ctype != "string":
                    continue  # empty numeric/date fields are nulls
                try:
                    parsed = checks[ctype](value)
                    if ctype in ranges and not -ranges[ctype] <= int(parsed) < ranges[ctype]:
                        raise ValueError
                    if ctype == "float64" and not math.isfinite(float(parsed)) and \
                            value.lower() not in ("inf", "-inf", "nan"):
                        raise ValueError
                except ValueError:
                    return TypeMismatchError(
                        f"{source}:{line}: column '{name}' does not hold a valid {ctype} value",
                        "fix the value or the column's type in the spec",
                    )
    return MalformedRowError(f"{source}: the CSV could not be parsed",
                             "check quoting and line endings")


def _parse_bool(value: str) -> bool:
    # Exactly the true_values/false_values given to pyarrow (which are case-sensitive).
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(value)


def gc_orphans(catalog: Catalog, min_age_s: float = 3600.0) -> list[Path]:
    """Remove vault directories no catalog entry points at (left by a killed ingest)."""
    removed: list[Path] = []
    known = catalog.known_storage_ids()
    now = time.time()
    if not catalog.vault_dir.exists():
        return removed
    for ds_dir in catalog.vault_dir.iterdir():
        if not ds_dir.is_dir():
            continue
        for sdir in ds_dir.iterdir():
            if sdir.name in known or not sdir.is_dir():
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - sdir.stat().st_mtime >= min_age_s:
                    shutil.rmtree(sdir, ignore_errors=True)
                    removed.append(sdir)
    return removed
