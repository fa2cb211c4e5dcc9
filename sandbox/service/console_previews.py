"""What the console shows of an export request: its items previewed for a person to read
(tables, text, images; content is never run) and its checks' details."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Iterable
from typing import Any

from ..exports.store import ExportRequest, ExportStore, StoredItem

log = logging.getLogger("sandbox.service")
MAX_PREVIEW_ROWS, MAX_PREVIEW_CHARS, MAX_DETAIL_CHARS = 200, 20_000, 6_000


def _take(it: Iterable[Any], n: int) -> Iterable[Any]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def csv_preview(data: bytes) -> dict[str, Any]:
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    rows = list(_take(reader, MAX_PREVIEW_ROWS + 1))
    if not rows:
        return {"kind": "table", "head": None}
    total = sum(1 for _ in reader) + len(rows) - 1
    return {"kind": "table", "head": rows[0], "rows": rows[1:], "total": total}


def parquet_preview(data: bytes) -> dict[str, Any]:
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data))
    rows = t.slice(0, MAX_PREVIEW_ROWS).to_pylist()
    return {"kind": "table", "head": t.column_names,
            "rows": [[r[c] for c in t.column_names] for r in rows], "total": t.num_rows}


def text_preview(data: bytes, media_type: str) -> dict[str, Any]:
    text = data.decode("utf-8", errors="replace")
    if media_type == "application/json":
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return {"kind": "text", "src": None, "text": text[:MAX_PREVIEW_CHARS],
            "cut": len(text) > MAX_PREVIEW_CHARS, "length": len(text)}


def preview(base: str, store: ExportStore, req: ExportRequest,
            item: StoredItem) -> dict[str, Any]:
    """What the item holds, for a person to read; content is never run."""
    if not item.kept:
        why = {"withdrawn": "its requester withdrew the request",
               "rejected": "the request was rejected"}.get(req.state,
                                                           "the checks blocked the request")
        return {"kind": "gone", "why": why}
    image = {"kind": "image", "src": f"{base}exports/{req.id}/items/{item.position}",
             "alt": item.name, "text": None}
    if item.media_type == "image/png":
        return image
    data = store.item_data(req.id, item.position)
    if item.media_type == "image/svg+xml":  # the markup too: hidden text does not show
        source = text_preview(data, item.media_type)
        return {**source, **image, "text": source["text"]}
    try:
        if item.media_type == "text/csv":
            return csv_preview(data)
        if item.media_type == "application/vnd.apache.parquet":
            return parquet_preview(data)
        return text_preview(data, item.media_type)
    except Exception:  # damaged content is the checks' business: say it, do not fail
        log.info("no preview of export %s item %d", req.id, item.position)
        return {"kind": "broken"}


def detail_text(value: Any) -> str:
    """A check's (or a record's) details as indented JSON, cut to ``MAX_DETAIL_CHARS``."""
    if not value:
        return ""
    text = json.dumps(value, indent=1, ensure_ascii=False, default=str)
    return text[:MAX_DETAIL_CHARS] + "\n…" if len(text) > MAX_DETAIL_CHARS else text


def export_context(base: str, store: ExportStore, req: ExportRequest) -> dict[str, Any]:
    """What the request page shows besides the request: check results, item previews."""
    checks = None if req.report is None else req.report.to_dict("reviewer")
    return {"req": req, "checks": checks,
            "detail_texts": [detail_text(r.get("details")) for r in
                             (checks or {}).get("results", [])],
            "items": [(it, preview(base, store, req, it)) for it in req.items]}
