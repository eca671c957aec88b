"""The contract: JSON Schema files match the Structs; envelopes; states."""

from __future__ import annotations

import msgspec
import pytest

import schemas
from schemas import export


def test_json_schema_files_match_the_structs() -> None:
    assert export.main(["--check"]) == 0, "schemas/json drifted from schemas/*.py: run `make schemas`"


def test_drift_is_detected(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "OUT", tmp_path)
    assert export.main(["--check"]) == 1  # nothing generated there yet
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0


def test_descriptions_do_not_depend_on_how_a_library_dedents_docstrings() -> None:
    # msgspec 0.22 and 0.23 render the same docstring with different
    # indentation; the exported files must be the same for both.
    a = export.normalised({"description": "One line.\n    Two   lines.", "x": [{"description": "a\n\n b"}]})
    b = export.normalised({"description": "One line.\nTwo lines.\n", "x": [{"description": "a b"}]})
    assert a == b == {"description": "One line. Two lines.", "x": [{"description": "a b"}]}


@pytest.mark.parametrize(
    "struct",
    [s for s in export.EXPORTED if issubclass(s, schemas.Message)],
    ids=lambda s: s.__name__,
)
def test_every_bus_message_carries_version_sender_and_seq(struct: type[msgspec.Struct]) -> None:
    fields = {f.encode_name for f in msgspec.structs.fields(struct)}
    assert {"v", "sender", "seq"} <= fields


def test_every_ankaios_state_and_substate_is_representable() -> None:
    pairs = [
        ("Pending", "Initial"),
        ("Pending", "WaitingToStart"),
        ("Pending", "Starting"),
        ("Pending", "StartingFailed"),
        ("Running", "Ok"),
        ("Stopping", "Stopping"),
        ("Stopping", "WaitingToStop"),
        ("Stopping", "DeleteFailed"),
        ("Succeeded", "Ok"),
        ("Failed", "ExecFailed"),
        ("Failed", "Unknown"),
        ("Failed", "Lost"),
        ("NotScheduled", ""),
        ("AgentDisconnected", ""),
        ("Removed", ""),
    ]
    for state, sub in pairs:
        es = msgspec.json.decode(msgspec.json.encode({"state": state, "substate": sub}), type=schemas.ExecutionState)
        assert str(es) == (f"{state}({sub})" if sub else state)


def test_a_substate_of_another_state_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="not a substate of Running"):
        msgspec.json.decode(b'{"state":"Running","substate":"Lost"}', type=schemas.ExecutionState)
