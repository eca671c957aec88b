"""SHA-256 and BLAKE2b from CPython's own modules.

`import hashlib` loads OpenSSL's libcrypto (~3.6 MB of RSS in every process
that imports it); the services need only these two digests, which CPython
also builds in (the same results as hashlib's).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hashlib's types, for the checker only
    from hashlib import blake2b, sha256
else:
    from _blake2 import blake2b

    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256

__all__ = ["blake2b", "sha256"]
