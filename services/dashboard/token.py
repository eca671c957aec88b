"""The dashboard's bearer token on disk: `ank up` makes one (printed once,
stored mode 600 in its state directory) and hands the dashboard the file,
never the token itself (a command line is visible to every local user)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE = "dashboard.token"
# `ank up` without --secure: ANK_DASHBOARD_NO_TOKEN=1 serves the dashboard without a token.
NO_TOKEN_ENV = "ANK_DASHBOARD_NO_TOKEN"


class TokenError(Exception):
    """A token file that cannot be used; the message names the problem."""


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


def wanted(secure: bool) -> bool:
    """Whether `ank up` protects its dashboard with a token: always when
    secured, otherwise unless ANK_DASHBOARD_NO_TOKEN=1."""
    return secure or os.environ.get(NO_TOKEN_ENV) != "1"


def argv(state_dir: Path, secure: bool) -> list[str]:
    """The dashboard's token option for `ank up`'s child."""
    return ["--token-file", str(token_path(state_dir))] if wanted(secure) else []


def ensure(path: Path) -> tuple[str, bool]:
    """The token in `path`, made (mode 600, never group/world readable) if
    missing; (token, made_now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read(path), False
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def read(path: Path) -> str:
    """The token a file holds; refused if others may read it or it is empty."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the dashboard token file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"dashboard token file {path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    if not text:
        raise TokenError(f"dashboard token file {path} is empty")
    return text


def prepare(state_dir: Path, secure: bool) -> str | None:
    """Makes `ank up`'s token if it needs one; the line to print (the token
    itself only when it was just made), or None."""
    if not wanted(secure):
        return None
    path = token_path(state_dir)
    token, made = ensure(path)
    if made:
        return f"dashboard token (shown once; kept in {path}): {token}"
    return f"dashboard token in {path}"
