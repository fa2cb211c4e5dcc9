"""The command-line reference, docs/cli.md, made from the ``--help`` of every group and
command, so that it cannot drift from the code (tests/test_cli_reference.py checks it).

    python -m sandbox.cli.reference > docs/cli.md
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

REFRESH = "python -m sandbox.cli.reference > docs/cli.md"
WIDTH = 80  # help wrapped at a fixed width, so the file does not depend on the terminal


def contexts(root: click.Command, name: str = "sandbox") -> Iterator[click.Context]:
    """A context for the root and every group and command under it, depth first, in the
    order ``--help`` lists them."""
    top = click.Context(root, info_name=name, terminal_width=WIDTH, max_content_width=WIDTH,
                        **root.context_settings)
    stack = [top]
    while stack:
        ctx = stack.pop()
        yield ctx
        if isinstance(ctx.command, click.Group):
            subs = []
            for sub_name in ctx.command.list_commands(ctx):
                sub = ctx.command.get_command(ctx, sub_name)
                if sub is not None and not sub.hidden:
                    subs.append(click.Context(sub, info_name=sub_name, parent=ctx))
            stack.extend(reversed(subs))


def anchor(command_path: str) -> str:
    """The Markdown anchor of a command's heading (``sandbox keys init`` -> sandbox-keys-init)."""
    return command_path.replace(" ", "-")


def render(root: click.Command, name: str = "sandbox") -> str:
    """docs/cli.md: a contents list, then each command's ``--help`` under its own heading."""
    all_ctx = list(contexts(root, name))
    out = [f"# `{name}` command reference", "",
           f"Every group and command of `{name}` with its `--help`. Generated from the code;",
           f"do not edit by hand. Refresh it with `{REFRESH}`.", ""]
    for ctx in all_ctx:
        depth = len(ctx.command_path.split()) - 1
        summary = ctx.command.get_short_help_str(limit=WIDTH)
        out.append(f"{'  ' * depth}- [{ctx.command_path}](#{anchor(ctx.command_path)})"
                   + (f": {summary}" if summary and depth else ""))
    for ctx in all_ctx:
        help_text = "\n".join(line.rstrip() for line in ctx.command.get_help(ctx).splitlines())
        out += ["", f"## {ctx.command_path}", "", "```text", help_text, "```"]
    return "\n".join(out) + "\n"


def _print_reference() -> None:
    """Write the reference of the installed `sandbox` command to standard output (UTF-8)."""
    from . import main  # an entry point, like __main__: it may import the package

    sys.stdout.buffer.write(render(main).encode("utf-8"))


if __name__ == "__main__":
    _print_reference()
