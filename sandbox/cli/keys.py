"""`sandbox keys`: the master keys of the file key store (密钥管理)."""

from __future__ import annotations

import click

from ..keys import STATES, FileKeyStore, key_info_dicts
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
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only keys in this state (repeatable), e.g. --state retired.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one per line.")
@pass_ctx
def keys_list(c: Context, fmt: str, states: tuple[str, ...], quiet: bool) -> None:
    """List master keys, their states and what each wraps (never their material)."""
    from ..operations import keys_in_use, other_keys_in_use

    rows = key_info_dicts(c.kms())
    if states:
        rows = [r for r in rows if r["state"] in states]
    if quiet:
        for r in rows:
            click.echo(r["id"])
        return
    catalog = c.catalog()
    use, others = keys_in_use(catalog), other_keys_in_use(catalog)
    for r in rows:
        r["datasets"] = ", ".join(use.get(r["id"], [])) or "-"
        r["other_keys"] = ", ".join(others.get(r["id"], [])) or "-"
    emit(rows, ["id", "state", "created", "changed", "datasets", "other_keys"], fmt)


@keys.command("rotate")
@pass_ctx
def keys_rotate(c: Context) -> None:
    """New master key; re-wrap every key it wraps (data keys, the identifier index key; no
    data rewritten); retire the old key."""
    from ..operations import rotate_master_key

    result = rotate_master_key(c.catalog(), c.file_keystore())
    record_action(c, "key.rotated", new_key=result.new_key, retired=result.retired,
                  rewrapped=result.rewrapped)
    also = "".join(f" and the {o}" for o in result.others)
    click.echo(f"active master key is now {result.new_key}; re-wrapped {result.rewrapped} data "
               f"key(s){also}; every file opens; retired: {', '.join(result.retired) or '-'}")


@keys.command("destroy")
@click.argument("key_id")
@click.option("--force", is_flag=True,
              help="Destroy even if datasets still depend on the key (they become unreadable).")
@pass_ctx
def keys_destroy(c: Context, key_id: str, force: bool) -> None:
    """Erase a retired master key (crypto-shredding of data still wrapped under it).

    Refused while the key still wraps anything in use: run `sandbox keys rotate` first."""
    from ..operations import destroy_master_key

    lost = destroy_master_key(c.catalog(), c.file_keystore(), key_id, force)
    record_action(c, "key.destroyed", key_id=key_id)
    click.echo(f"master key {key_id} destroyed" +
               (f"; unreadable now: {', '.join(lost)}" if lost else ""))
