"""Ankaios's option layering, shared by `ank-server` and `ank-agent`: the
command line, then the `<PREFIX>_<KEY>` environment variable, then the TOML
configuration file; PEM files given inline (`<pem>_content`) are written to a
file."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.bus.ankaios_tls import Pem

PEMS = ("ca_pem", "crt_pem", "key_pem")


class LayeredConfig:
    def __init__(self, prefix: str, what: str, path: str | None, environ: dict[str, str]) -> None:
        """Raises ValueError naming `what` and the file when it cannot be read."""
        self.prefix, self.what, self.environ = prefix, what, environ
        self.conf: dict[str, Any] = {}
        if path:
            try:
                self.conf = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read {what} {path}: {exc}") from exc

    def pick(self, option: Any, key: str) -> Any:
        if option is not None:
            return option
        env = self.environ.get(f"{self.prefix}_{key.upper()}")
        return env if env else self.conf.get(key)

    def flag(self, option: Any, key: str) -> bool:
        value = self.pick(option, key)
        return str(value).lower() in ("1", "true", "yes") if value is not None else False

    def pem(self, options: dict[str, str | None], insecure: bool, write: Callable[[str, str], str]) -> Pem:
        """The PEM files: each from the options, the environment, the file,
        or its inline `<pem>_content` (given to `write(content, name)`, which
        returns the file it wrote); both a file and content is an error."""
        found: dict[str, str | None] = {}
        for name in PEMS:
            value, content = self.pick(options.get(name), name), self.conf.get(f"{name}_content")
            if value and content:
                raise ValueError(f"{self.what}: give {name} or {name}_content, not both")
            found[name] = write(str(content), name) if content else value
        return Pem() if insecure else Pem(found["ca_pem"], found["crt_pem"], found["key_pem"])
