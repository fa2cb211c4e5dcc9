"""Read what an export item holds, whatever its type, for the checks.

Every item becomes a ``Content``: tables (column names and rows of plain values), loose
numbers and text (JSON outside a table shape, plain text), and the text to scan for
identifiers with where it was found. Problems that make an item unreadable or not what its
name says (a PNG that is not a PNG, data hidden after the image end) are ``problems``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .items import MEDIA_TYPES, ExportItem, FrameItem, plain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Chunks that hold pixels, colour and display information, or text (scanned).
PNG_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP",
              b"sBIT", b"sRGB", b"cICP", b"bKGD", b"hIST", b"pHYs", b"sPLT", b"tIME",
              b"tEXt", b"zTXt", b"iTXt", b"acTL", b"fcTL", b"fdAT"}
MAX_INFLATE = 1 << 20  # compressed PNG text is read up to 1 MiB
_NUMBER = re.compile(r"^[-+]?(\d+|\d{1,3}(,\d{3})+)(\.\d+)?([eE][-+]?\d+)?$")
_NUMBERS_IN_TEXT = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(\.\d+)?([eE][-+]?\d+)?(?![\w])")


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Content:
    item: str
    media_type: str
    tables: list[Table] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)  # outside any table
    texts: list[str] = field(default_factory=list)  # outside any table
    scan: list[tuple[str, str]] = field(default_factory=list)  # (where, text) to scan
    image: bool = False
    free_text: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(t.rows) for t in self.tables)


def number_of(text: str) -> float | int | None:
    """A CSV cell or JSON string that is a number ("20,417", "0.25", "-3e2"), else None."""
    s = text.strip()
    if not s or not _NUMBER.match(s):
        return None
    s = s.replace(",", "")
    try:
        return int(s) if re.fullmatch(r"[-+]?\d+", s) else float(s)
    except ValueError:
        return None


def _table_scan(c: Content, t: Table) -> None:
    for j, col in enumerate(t.columns):
        c.scan.append((f"{t.name} header #{j + 1}", str(col)))
    for i, row in enumerate(t.rows):
        for j, v in enumerate(row):
            if v is not None:
                c.scan.append((f"{t.name} row {i + 1} column #{j + 1}", _scan_text(v)))


def _scan_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e18:
        return str(int(v))
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def read(item: ExportItem, max_rows: int) -> Content:
    """The content of one item (never raises on bad content: problems are recorded)."""
    media = item.media_type
    c = Content(item.filename, media)
    if isinstance(item, FrameItem):
        t = Table(item.filename, list(item.columns), [list(r) for r in item.rows])
        c.tables.append(t)
        _table_scan(c, t)
        return c
    ext = item.extension
    if ext not in MEDIA_TYPES:
        c.problems.append(f"'{item.filename}': files of type '{ext or '(none)'}' cannot be "
                          f"exported (allowed: {', '.join(sorted(MEDIA_TYPES))})")
        return c
    if media != MEDIA_TYPES[ext]:
        c.problems.append(f"'{item.filename}': declared as {media}, but a '{ext}' file is "
                          f"{MEDIA_TYPES[ext]}")
        return c
    reader = {".csv": _csv, ".json": _json, ".txt": _txt, ".svg": _svg, ".png": _png,
              ".parquet": _parquet}[ext]
    reader(c, item.data, max_rows)
    return c


def _text(c: Content, data: bytes) -> str | None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        c.problems.append(f"'{c.item}' is not UTF-8 text, so it is not a {c.media_type} file")
        return None
    if "\x00" in text:
        c.problems.append(f"'{c.item}' contains NUL bytes: it is not a text file")
        return None
    return text


def _csv(c: Content, data: bytes, max_rows: int) -> None:
    text = _text(c, data)
    if text is None:
        return
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        c.problems.append(f"'{c.item}' is not a readable CSV file")
        return
    if len(rows) - 1 > max_rows:
        c.problems.append(f"'{c.item}' has {len(rows) - 1:,} rows; at most {max_rows:,} may "
                          "be exported")
        return
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    cells = [[None if v == "" else (n if (n := number_of(v)) is not None else v) for v in r]
             for r in body]
    t = Table(c.item, header, cells)
    c.tables.append(t)
    _table_scan(c, t)  # the numbers as numbers (1.38e10 is 13800000000) ...
    for i, r in enumerate(body):  # ... and the text as written ("007123456" keeps its zeros)
        for j, v in enumerate(r):
            if v and isinstance(cells[i][j], int | float):
                c.scan.append((f"{t.name} row {i + 1} column #{j + 1}", v))


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{path}.{k}" if path else str(k), str(k)
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def _json_table(doc: Any, name: str) -> Table | None:
    """Records ([{col: v}, ...]) or split form ({columns, data|rows}) as a table."""
    if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc) and \
            all(not isinstance(v, dict | list) for r in doc for v in r.values()):
        cols = list(dict.fromkeys(k for r in doc for k in r))
        return Table(name, cols, [[plain(r.get(k)) for k in cols] for r in doc])
    if isinstance(doc, dict) and isinstance(doc.get("columns"), list):
        body = doc.get("data", doc.get("rows"))
        if isinstance(body, list) and all(isinstance(r, list) and len(r) == len(doc["columns"])
                                          and not any(isinstance(v, dict | list) for v in r)
                                          for r in body):
            return Table(name, [str(x) for x in doc["columns"]], [list(r) for r in body])
    return None


def _json(c: Content, data: bytes, max_rows: int) -> None:
    text = _text(c, data)
    if text is None:
        return

    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        doc = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):
        c.problems.append(f"'{c.item}' is not valid JSON")
        return
    table = _json_table(doc, c.item)
    if table is not None:
        if len(table.rows) > max_rows:
            c.problems.append(f"'{c.item}' has {len(table.rows):,} rows; at most "
                              f"{max_rows:,} may be exported")
            return
        c.tables.append(table)
        _table_scan(c, table)
        return
    for path, v in _walk(doc, ""):
        if v is None:
            continue
        c.scan.append((f"{c.item} {path or 'value'}", _scan_text(v)))
        if isinstance(v, bool):
            c.texts.append("true" if v else "false")
        elif isinstance(v, int | float):
            c.numbers.append(v)
        elif isinstance(v, str):
            n = number_of(v)
            c.numbers.append(n) if n is not None else c.texts.append(v)


def _txt(c: Content, data: bytes, max_rows: int) -> None:
    text = _text(c, data)
    if text is None:
        return
    c.free_text = True
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            c.scan.append((f"{c.item} line {i + 1}", line))
            for m in _NUMBERS_IN_TEXT.finditer(line):
                n = number_of(m.group(0))
                if n is not None:
                    c.numbers.append(n)


def _svg(c: Content, data: bytes, max_rows: int) -> None:
    text = _text(c, data)
    if text is None:
        return
    if "<svg" not in text.lower():
        c.problems.append(f"'{c.item}' is not an SVG image (no <svg> element)")
        return
    c.image = True
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            c.scan.append((f"{c.item} line {i + 1}", re.sub(r"<[^>]*>", " ", line) or line))
            c.scan.append((f"{c.item} line {i + 1} (markup)", line))


def _png(c: Content, data: bytes, max_rows: int) -> None:
    if not data.startswith(PNG_MAGIC):
        c.problems.append(f"'{c.item}' is not a PNG image (wrong signature)")
        return
    c.image = True
    pos, ended = len(PNG_MAGIC), False
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4 or \
                zlib.crc32(ctype + body) != int.from_bytes(crc, "big"):
            c.problems.append(f"'{c.item}': a PNG chunk is truncated or corrupt")
            return
        pos += 12 + length
        if ctype not in PNG_CHUNKS:
            c.problems.append(f"'{c.item}' has a PNG chunk of unknown type "
                              f"{ctype.decode('latin-1')!r}, which could hide data; save "
                              "the image again without extra chunks")
            return
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            text = _png_text(ctype, body)
            if text is None:
                c.problems.append(f"'{c.item}': a PNG text chunk cannot be read")
                return
            c.scan.append((f"{c.item} text chunk", text))
        if ctype == b"IEND":
            ended = True
            break
    if not ended:
        c.problems.append(f"'{c.item}': the PNG image has no end (IEND chunk)")
    elif pos != len(data):
        c.problems.append(f"'{c.item}' has {len(data) - pos:,} bytes after the end of the "
                          "image, which could hide data")


def _inflate(data: bytes) -> bytes | None:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_INFLATE)
    except zlib.error:
        return None
    return None if d.unconsumed_tail else out


def _png_text(ctype: bytes, body: bytes) -> str | None:
    keyword, sep, rest = body.partition(b"\x00")
    if not sep:
        return None
    if ctype == b"tEXt":
        return keyword.decode("latin-1") + " " + rest.decode("latin-1")
    if ctype == b"zTXt":
        text = _inflate(rest[1:]) if rest[:1] == b"\x00" else None
        return None if text is None else keyword.decode("latin-1") + " " + \
            text.decode("latin-1")
    if len(rest) < 2:
        return None
    compressed, method, rest = rest[0], rest[1], rest[2:]
    lang, _, rest = rest.partition(b"\x00")
    translated, _, text = rest.partition(b"\x00")
    if compressed:
        if method != 0 or (inflated := _inflate(text)) is None:
            return None
        text = inflated
    parts = (keyword.decode("latin-1"), lang.decode("latin-1", "replace"),
             translated.decode("utf-8", "replace"), text.decode("utf-8", "replace"))
    return " ".join(parts)


def _parquet(c: Content, data: bytes, max_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        c.problems.append(f"'{c.item}' is not a Parquet file (or it is encrypted)")
        return
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        if pf.metadata.num_rows > max_rows:
            c.problems.append(f"'{c.item}' has {pf.metadata.num_rows:,} rows; at most "
                              f"{max_rows:,} may be exported")
            return
        table = pf.read()
    except (OSError, pa.ArrowException):
        c.problems.append(f"'{c.item}' is not a readable Parquet file")
        return
    meta = table.schema.metadata or {}
    for k, v in meta.items():
        c.scan.append((f"{c.item} metadata", k.decode("utf-8", "replace") + " " +
                       v.decode("utf-8", "replace")))
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[plain(v) if not isinstance(v, dict | list) else json.dumps(v, default=str)
             for v in r] for r in zip(*cols, strict=True)] if cols else []
    t = Table(c.item, list(table.column_names), rows)
    c.tables.append(t)
    _table_scan(c, t)
