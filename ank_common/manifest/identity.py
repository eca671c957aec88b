"""The instance id of a workload: a short stable hash of its rendered
fields, so that equal workloads have equal ids and any change makes a new
instance."""

from __future__ import annotations

from typing import Any

import msgspec

from ank_common import digest
from schemas.manifest import Workload

# Looked up once: msgspec.structs.fields() reads the class annotations on
# every call (most of an apply's cost at 10,000 workloads).
_WORKLOAD_FIELDS = msgspec.structs.fields(Workload)


def instance_id(w: Workload) -> str:
    """A short stable hash of the (rendered) workload: equal workloads have
    equal ids, any change to any field changes it."""
    canonical = {
        field.encode_name: getattr(w, field.name)
        for field in _WORKLOAD_FIELDS
        if not _is_default(field, getattr(w, field.name))
    }
    encoded = msgspec.json.encode(canonical, order="sorted")
    return digest.sha256(encoded).hexdigest()[:16]


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    """Whether a field holds its default, compared by value (msgspec's own
    omit_defaults compares some values by identity)."""
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False
