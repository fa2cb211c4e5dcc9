"""Where the sandbox keeps its state, and how that is configured.

All state lives under one home directory; keys live in a separate key store so
that a copy of the data directory alone is useless. Each setting is documented
once here (name, default, help) and ``docs/settings.md`` is checked against it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .statedb.base import is_url


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SANDBOX_HOME",
        "~/.local/share/sandbox",
        "Directory holding all state: the catalog, the encrypted vault, and the state database "
        "(privacy ledger and audit log). "
        "The `--home` option overrides it.",
    ),
    Setting(
        "SANDBOX_KEYSTORE",
        "~/.config/sandbox/keystore",
        "Directory of the file key store (master keys, mode 0700/0600). Must lie "
        "outside the home directory. The `--keystore` option overrides it.",
    ),
    Setting(
        "SANDBOX_MASTER_KEY",
        "(unset)",
        "A base64-encoded 32-byte master key given by the environment (containers). "
        "When set, it replaces the file key store.",
    ),
    Setting(
        "SANDBOX_MASTER_KEY_FILE",
        "(unset)",
        "Path of a mounted secret file holding a base64-encoded 32-byte master key. "
        "When set, it replaces the file key store.",
    ),
    Setting(
        "SANDBOX_STATE",
        "<home>/state.sqlite",
        "The state database (privacy ledger, audit log, workspaces, scenarios, exports): a "
        "SQLite file path, or a postgresql:// URL of a database that several service "
        "replicas share. The service configuration's `state:` key overrides it.",
    ),
    Setting(
        "SANDBOX_COOKIE_SECRET",
        "(unset: random per process)",
        "Secret (at least 32 characters) that signs the console's cookies. Give every "
        "replica of the service the same one, so a sign-in works on all of them.",
    ),
    Setting(
        "SANDBOX_TEMPLATES",
        "notebooks_template/ of the checkout, else <prefix>/share/sandbox/notebooks_template",
        "Directory of the notebook templates; `sandbox workspace create` provisions "
        "`scenarios/<scenario id>.ipynb` from it for the new workspace.",
    ),
    Setting(
        "SANDBOX_DEBUG",
        "(unset)",
        "Set to 1 to print tracebacks of unexpected errors in the CLI (operators only).",
    ),
)


@dataclass(frozen=True)
class Paths:
    """Resolved locations of the sandbox state."""

    home: Path
    keystore: Path
    state: str | None = None  # SANDBOX_STATE or the service's `state:` (None: in the home)

    @property
    def catalog_db(self) -> Path:
        return self.home / "catalog.sqlite"

    @property
    def state_db(self) -> Path | str:
        """The state database: a SQLite file, or a ``postgresql://`` URL (a str)."""
        if self.state is None:
            return self.home / "state.sqlite"
        return self.state if is_url(self.state) else Path(self.state)

    @property
    def vault_dir(self) -> Path:
        return self.home / "vault"

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None,
                keystore: str | os.PathLike[str] | None = None,
                state: str | None = None) -> Paths:
        home_s = home or os.environ.get("SANDBOX_HOME") or "~/.local/share/sandbox"
        state = state or os.environ.get("SANDBOX_STATE", "").strip() or None
        if state is not None and not is_url(state):
            state = os.path.normpath(Path(state).expanduser().absolute())
        ks_s = keystore or os.environ.get("SANDBOX_KEYSTORE") or "~/.config/sandbox/keystore"
        # normpath: a '..' must not hide that the key store lies inside the home
        home_p = Path(os.path.normpath(Path(home_s).expanduser().absolute()))
        ks_p = Path(os.path.normpath(Path(ks_s).expanduser().absolute()))
        if ks_p == home_p or home_p in ks_p.parents:
            raise ConfigError(
                f"the key store {ks_p} lies inside the home directory {home_p}",
                "keep keys apart from the data they protect: set SANDBOX_KEYSTORE or "
                "--keystore to a directory outside the home",
            )
        return cls(home=home_p, keystore=ks_p, state=state)

    def ensure_home(self) -> None:
        """Create the home (0700) and prove it is writable, or fail with a clear error."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.vault_dir.mkdir(mode=0o700, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.home, prefix=".probe-"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot write to the home directory {self.home}: {exc.strerror or exc}",
                "choose a writable directory with --home or SANDBOX_HOME",
            ) from None


def templates_dir() -> Path:
    """Where the notebook templates are: $SANDBOX_TEMPLATES, the checkout (development), or
    the copy installed with the package (``share/sandbox/notebooks_template``)."""
    env = os.environ.get("SANDBOX_TEMPLATES", "").strip()
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent / "notebooks_template"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "sandbox" / "notebooks_template"
