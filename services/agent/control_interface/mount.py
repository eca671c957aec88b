"""Making a process workload's FIFO folder appear at
/run/ankaios/control_interface, where Ankaios's SDKs look.

As root: the child gets a private mount namespace (unshare(CLONE_NEWNS),
mounts made private, then a bind mount of the folder onto the target) right
before exec, so it sees its own interface there and no other workload's. The
empty target directory is created on the host once. Where that cannot be done
(not root, no mount namespaces, e.g. in an unprivileged container), the
process runs without the mount and `ANK_CONTROL_INTERFACE` names the real
folder: an SDK program must then be pointed there (Python SDK:
`ControlInterface.ANKAIOS_CONTROL_INTERFACE_BASE_PATH`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger("ank.agent.control_interface")

TARGET = "/run/ankaios/control_interface"
ENV = "ANK_CONTROL_INTERFACE"
_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

_libc: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    return _libc


def can_namespace() -> bool:
    return os.geteuid() == 0 and _load() is not None


def preexec(folder: str) -> Callable[[], None] | None:
    """A preexec_fn that mounts `folder` at TARGET in a new mount namespace,
    or None where that is not possible (see the module doc)."""
    libc = _load()
    if os.geteuid() != 0 or libc is None:
        return None
    try:
        os.makedirs(TARGET, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create %s (%s): process workloads find their control interface via $%s", TARGET, exc, ENV)
        return None
    unshare, mount = libc.unshare, libc.mount
    source, target, root = folder.encode(), TARGET.encode(), b"/"

    def run() -> None:  # in the child, between fork and exec: C calls only
        if unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
        if mount(b"none", root, None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making the mounts private failed")
        if mount(source, target, None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind mount onto {TARGET} failed")

    return run
