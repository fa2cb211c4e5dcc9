"""The wire format of export items: what ``sb.export`` sends and the service parses.

A frame goes as ``{"kind": "frame", "name", "columns", "rows", "release_ids",
"postprocessing"}``, a file as ``{"kind": "file", "name", "media_type", "data_base64",
...}``. This module and ``items`` import nothing but the standard library and the error
classes, so a developer's notebook kernel can build and send items without loading the
store, the checks, the key store or the vault (``tests/test_client.py`` pins it).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import ExportDummyError, ExportInputError
from .items import ExportItem, FileItem, FrameItem, dummy_refusal

__all__ = ["ExportDummyError", "ExportItem", "FileItem", "FrameItem", "dummy_refusal",
           "item_from_dict", "item_to_dict"]


def item_to_dict(item: ExportItem) -> dict[str, Any]:
    """JSON form (the HTTP body of an upload; files in base64)."""
    base = {"kind": item.kind, "name": item.name, "release_ids": list(item.release_ids),
            "postprocessing": list(item.postprocessing)}
    if isinstance(item, FrameItem):
        return {**base, "columns": list(item.columns), "rows": [list(r) for r in item.rows]}
    return {**base, "media_type": item.media_type,
            "data_base64": base64.b64encode(item.data).decode()}


def item_from_dict(d: Any) -> ExportItem:
    """Parse one item of an upload; every problem is an ``ExportInputError``."""
    if not isinstance(d, dict):
        raise ExportInputError("an export item must be an object",
                               'send {"kind": "frame", ...} or {"kind": "file", ...}')
    kind = d.get("kind")
    allowed = {"frame": {"kind", "name", "columns", "rows", "release_ids", "release_id",
                         "postprocessing"},
               "file": {"kind", "name", "media_type", "data_base64", "release_ids",
                        "release_id", "postprocessing"}}
    if kind not in allowed:
        raise ExportInputError(f"unknown item kind {kind!r}", "use 'frame' or 'file'")
    extra = sorted(set(d) - allowed[kind])
    if extra:
        raise ExportInputError(f"unknown field(s) {', '.join(extra)} in a {kind} item",
                               f"allowed: {', '.join(sorted(allowed[kind]))}")
    ids = d.get("release_ids") or ([d["release_id"]] if d.get("release_id") else [])
    post = d.get("postprocessing") or []
    if not isinstance(ids, list) or not isinstance(post, list):
        raise ExportInputError("release_ids and postprocessing must be lists",
                               'e.g. "release_ids": ["c5d4..."], "postprocessing": ["round"]')
    if kind == "frame":
        cols, rows = d.get("columns"), d.get("rows")
        if not isinstance(cols, list) or not isinstance(rows, list) or \
                not all(isinstance(r, list) for r in rows):
            raise ExportInputError("a frame needs 'columns' (a list) and 'rows' (a list of "
                                   "lists)", "send the DataFrame in split form")
        return FrameItem(str(d.get("name")), tuple(cols), tuple(tuple(r) for r in rows),
                         tuple(ids), tuple(post))
    try:
        data = base64.b64decode(str(d.get("data_base64", "")), validate=True)
    except (binascii.Error, ValueError):
        raise ExportInputError("a file's data_base64 is not base64", "encode the bytes in "
                               "standard base64") from None
    return FileItem(str(d.get("name")), data, str(d.get("media_type") or ""), tuple(ids),
                    tuple(post))
