"""HTML of the auditor console and the audit report: Jinja2 templates, autoescaped.

Every value a template prints is escaped unless it is already ``Markup`` (another
template's output, the XSRF field tornado makes), so stored text (titles, SQL, member
names, comments, cells) can never become markup, and no Python code escapes by hand.
The one style sheet, ``sandbox.css``, is inlined into both kinds of page.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

HERE = Path(__file__).parent


@cache
def environment() -> Environment:
    """The templates' environment, made once (its template cache is shared)."""
    from .. import report  # the number and time formats pages share (report imports us)
    from ..exports.model import FLAGGED

    env = Environment(loader=FileSystemLoader(HERE),
                      autoescape=select_autoescape(["html", "svg"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      finalize=_blank_none, extensions=["jinja2.ext.do"])
    env.filters.update(eps=report.fmt_eps, delta=report.fmt_delta, time=report.short_time,
                       fold=report.fold_text)
    env.globals.update(FLAGGED=FLAGGED)  # the reviewers' marker of a flagged request
    return env


def _blank_none(value: Any) -> Any:
    """A missing value prints as nothing (not "None"): records lack optional fields."""
    return "" if value is None else value


def render(name: str, **context: Any) -> str:
    """The template ``name`` filled in with ``context``."""
    return environment().get_template(name).render(**context)
