"""Ankaios's connection options mapped onto Zenoh: its `http(s)://host:port`
server URLs and `host:port` addresses become Zenoh endpoints, and its PEM
options (`--ca_pem`, `--crt_pem`, `--key_pem`, or the ANK_*/ANKSERVER_*/
ANKAGENT_* environment variables) become Zenoh's TLS configuration with
mutual authentication. Without PEM files (Ankaios's `-k/--insecure`) the
links are plain TCP."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zenoh

from services.bus import BusConfigError, default_config_path, insert_settings


@dataclass(frozen=True)
class Pem:
    ca: str | None = None
    crt: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return any((self.ca, self.crt, self.key))


def pem_from(ca: str | None, crt: str | None, key: str | None, env_prefix: str) -> Pem:
    """The PEM options, each falling back to `<env_prefix>CA_PEM` etc."""
    return Pem(
        ca or os.environ.get(f"{env_prefix}CA_PEM") or None,
        crt or os.environ.get(f"{env_prefix}CRT_PEM") or None,
        key or os.environ.get(f"{env_prefix}KEY_PEM") or None,
    )


def endpoint(text: str, *, tls: bool) -> str:
    """`http://h:p` / `https://h:p` / `h:p` / `tcp/h:p` -> a Zenoh endpoint.
    The scheme follows whether TLS is configured (as Ankaios's follows -k)."""
    text = text.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :].rstrip("/")
            break
    if not text:
        raise BusConfigError("empty server address: expected host:port")
    if "/" in text:
        return text
    if ":" not in text.rsplit("]", 1)[-1]:
        raise BusConfigError(f"server address {text!r} has no port: expected host:port")
    return f"{'tls' if tls else 'tcp'}/{text}"


def _check(pem: Pem) -> None:
    missing = [name for name, v in (("ca_pem", pem.ca), ("crt_pem", pem.crt), ("key_pem", pem.key)) if not v]
    if missing:
        raise BusConfigError(f"mTLS needs all of ca_pem, crt_pem and key_pem; missing: {', '.join(missing)}")
    for name, v in (("ca_pem", pem.ca), ("crt_pem", pem.crt), ("key_pem", pem.key)):
        if not Path(str(v)).is_file():
            raise BusConfigError(f"{name} file not found: {v}")


def tls_settings(pem: Pem, *, listening: bool) -> dict[str, Any]:
    side = "listen" if listening else "connect"
    return {
        "root_ca_certificate": str(Path(str(pem.ca)).resolve()),
        f"{side}_certificate": str(Path(str(pem.crt)).resolve()),
        f"{side}_private_key": str(Path(str(pem.key)).resolve()),
        "enable_mtls": True,
        # Ankaios's certificates name the server `ank-server`, not its address.
        "verify_name_on_connect": False,
    }


def client_config(server: str | None, pem: Pem, base: str | Path | None = None) -> zenoh.Config:
    """A client configuration connecting to `server` (default: the base
    configuration's endpoints), over mTLS when PEM files are given."""
    path = Path(base) if base else default_config_path()
    try:
        conf = zenoh.Config.from_file(str(path))
    except Exception as exc:
        raise BusConfigError(f"cannot read Zenoh configuration {path}: {exc}") from exc
    server = server or os.environ.get("ANK_SERVER")
    settings: dict[str, Any] = {}
    if pem.given:
        _check(pem)
        settings["transport/link/tls"] = tls_settings(pem, listening=False)
        if not server:
            current = json.loads(conf.get_json("connect/endpoints"))
            settings["connect/endpoints"] = [
                "tls/" + e.split("/", 1)[1] if e.startswith("tcp/") else e for e in current
            ]
    if server:
        settings["connect/endpoints"] = [endpoint(s, tls=pem.given) for s in server.split(",") if s.strip()]
    return insert_settings(conf, settings)


def router_settings(addresses: list[str], pem: Pem) -> dict[str, Any]:
    """`ank-router` settings for `ank-server --address`: listen endpoints and,
    with PEM files, mTLS."""
    settings: dict[str, Any] = {"listen/endpoints": [endpoint(a, tls=pem.given) for a in addresses]}
    if pem.given:
        _check(pem)
        settings["transport/link/tls"] = tls_settings(pem, listening=True)
    return settings


ANKAIOS_DEFAULT = ("127.0.0.1", 25551)
PROJECT_DEFAULT = ("127.0.0.1", 7447)


def _listening(address: tuple[str, int]) -> bool:
    import socket

    try:
        with socket.create_connection(address, timeout=0.2):
            return True
    except OSError:
        return False


def default_server(server: str | None, zenoh_config: str | None, pem: Pem) -> str | None:
    """`server` as given; with nothing given (no option, no ANK_SERVER, the
    default configuration) and nothing on ank-zenoh's default 127.0.0.1:7447
    but something on Ankaios's default 127.0.0.1:25551 (an `ank-server`
    started with `address = '127.0.0.1:25551'`): that one."""
    if server or zenoh_config or os.environ.get("ANK_SERVER") or os.environ.get("ANK_ZENOH_CONFIG"):
        return server
    if not _listening(PROJECT_DEFAULT) and _listening(ANKAIOS_DEFAULT):
        return f"{'tls' if pem.given else 'tcp'}/{ANKAIOS_DEFAULT[0]}:{ANKAIOS_DEFAULT[1]}"
    return server
