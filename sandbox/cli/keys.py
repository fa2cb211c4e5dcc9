"""`sandbox keys`: the master keys of the file key store (密钥管理)."""

from __future__ import annotations

import click

from ..errors import SandboxError
from ..keys import FileKeyStore, key_info_dicts
from .common import Context, emit, format_option, pass_ctx, record_action


@click.group()
def keys() -> None:
    """Master keys: create, list, rotate, destroy (密钥管理)."""


@keys.command("init")
@pass_ctx
def keys_init(c: Context) -> None:
    """Create the file key store with a first master key."""
    key_id = FileKeyStore(c.paths.keystore).init()
    click.echo(f"key store created at {c.paths.keystore}; active master key {key_id}")
    click.echo("back up this directory separately from the data: without it the data is lost")


@keys.command("list")
@format_option
@pass_ctx
def keys_list(c: Context, fmt: str) -> None:
    """List master keys and their states (never their material)."""
    rows = key_info_dicts(c.kms())
    from ..operations import keys_in_use

    use = keys_in_use(c.catalog())
    for r in rows:
        r["datasets"] = ", ".join(use.get(r["id"], [])) or "-"
    emit(rows, ["id", "state", "created", "changed", "datasets"], fmt)


@keys.command("rotate")
@pass_ctx
def keys_rotate(c: Context) -> None:
    """New master key; re-wrap every data key (no data rewritten); retire the old key."""
    from ..operations import rotate_master_key

    result = rotate_master_key(c.catalog(), c.file_keystore())
    record_action(c, "key.rotated", new_key=result.new_key, retired=result.retired,
           rewrapped=result.rewrapped)
    click.echo(f"active master key is now {result.new_key}; re-wrapped {result.rewrapped} data "
               f"key(s); every file opens; retired: {', '.join(result.retired) or '-'}")


@keys.command("destroy")
@click.argument("key_id")
@click.option("--force", is_flag=True,
              help="Destroy even if datasets still depend on the key (they become unreadable).")
@pass_ctx
def keys_destroy(c: Context, key_id: str, force: bool) -> None:
    """Erase a retired master key (crypto-shredding of data still wrapped under it)."""
    from ..operations import keys_in_use

    users = keys_in_use(c.catalog()).get(key_id, [])
    if users and not force:
        raise SandboxError(
            f"master key {key_id} still wraps data keys of {', '.join(users)}",
            "run `sandbox keys rotate` first, or pass --force to make that data unreadable",
        )
    c.file_keystore().destroy(key_id)
    record_action(c, "key.destroyed", key_id=key_id)
    click.echo(f"master key {key_id} destroyed")

