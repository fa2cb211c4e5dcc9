"""Text for terminals and notebooks: display width and a caret under refused SQL.

Shared by the CLI and the notebook client (standard library only). Widths count East
Asian wide and full-width characters (CJK) as two columns and combining marks as none, so
Chinese text lines up and a caret lands under the right character.
"""

from __future__ import annotations

import unicodedata

CARET_WINDOW = 100  # characters of the refused line shown around the caret


def width(text: str) -> int:
    """Terminal columns of ``text`` (CJK two, combining marks none, others one)."""
    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` display columns."""
    return text + " " * max(columns - width(text), 0)


def printable(text: str) -> str:
    """Control characters (from data or input) as spaces: never sent to a terminal."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def caret(sql: str, line: int, column: int) -> list[str]:
    """Line ``line`` (1-based) of ``sql`` and a caret under character ``column``, both
    in display columns; a long line is cut around the caret. [] when out of range."""
    lines = sql.split("\n")
    if not 1 <= line <= len(lines):
        return []
    text = printable(lines[line - 1].rstrip("\r"))
    col = min(max(column, 1), len(text) + 1) - 1
    start = max(0, min(col - CARET_WINDOW // 2, len(text) - CARET_WINDOW))
    before = "…" if start else ""
    after = "…" if start + CARET_WINDOW < len(text) else ""
    return [before + text[start:start + CARET_WINDOW] + after,
            " " * (width(before) + width(text[start:col])) + "^"]
