"""The bus contract in one place (schemas/keys.py): every key built by its
builders, parsed back by its parsers, no key literal elsewhere in services/,
the ACL policy built from the same builders, docs/internals.md's table
generated from the same table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from schemas import keys
from services.bus import policy

ROOT = Path(__file__).resolve().parent.parent


def _is_key(value: object) -> bool:
    return isinstance(value, str) and value.startswith("ank/")


def _key_literals(path: Path) -> list[tuple[int, str]]:
    """String constants and f-strings that start with `ank/` (a key), docstrings excepted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and str(head.value).startswith("ank/"):
                found.append((node.lineno, ast.unparse(node)))
                for value in node.values:
                    docstrings.add(id(value))  # its parts are reported once, as the f-string
        elif isinstance(node, ast.Constant) and _is_key(node.value) and id(node) not in docstrings:
            found.append((node.lineno, repr(node.value)))
    return found


def test_no_module_under_services_or_ank_common_spells_a_key_itself() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for package in ("services", "ank_common")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _key_literals(path)
    ]
    assert offenders == [], "keys must come from schemas/keys.py:\n" + "\n".join(offenders)


def test_the_literal_finder_finds_a_key_literal_and_an_f_string_but_not_a_docstring(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""ank/state/** in a docstring."""\nA = "ank/desired"\nB = f"ank/plan/{A}"\nC = "see ank/x"\n')
    assert [line for line, _ in _key_literals(module)] == [2, 3]


@pytest.mark.parametrize(
    ("built", "parse", "expected"),
    [
        (keys.plan_key("car1"), keys.parse_plan_key, "car1"),
        (keys.state_key("car1", "db"), keys.parse_state_key, ("car1", "db")),
        (keys.state_key("", "db"), keys.parse_state_key, ("", "db")),
        (keys.agent_token_key("car-1.a_b"), keys.parse_agent_token_key, "car-1.a_b"),
        (keys.agent_status_key("car1"), keys.parse_agent_status_key, "car1"),
        (keys.energy_key("bot1"), keys.parse_energy_key, "bot1"),
        (keys.bind_key("db"), keys.parse_bind_key, "db"),
        (keys.health_key("car1", "db"), keys.parse_health_key, ("car1", "db")),
        (keys.event_key("rejected"), keys.parse_event_key, "rejected"),
        (keys.logs_key("car1", "db"), keys.parse_logs_key, ("car1", "db")),
        (keys.logs_stream_key("car1", "db"), keys.parse_logs_stream_key, ("car1", "db")),
    ],
)
def test_builders_and_parsers_round_trip(built: str, parse: object, expected: object) -> None:
    assert callable(parse)
    assert parse(built) == expected


def test_the_unscheduled_state_key_uses_the_tilde_segment() -> None:
    assert keys.state_key("", "roaming") == "ank/state/~/roaming"


@pytest.mark.parametrize(
    "key",
    [
        "ank/agents",  # too short
        "ank/agents/car1/status",  # another family
        "ank/agents/*",  # a wildcard where a name belongs
        "ank/agents/**",
        "ank/agents/car$*",
        "ank/agents/",  # an empty name
        "ank/plan/car1",  # another family
        "ank/agents/a/b",  # a name with a slash is two chunks
        "other/agents/car1",
    ],
)
def test_a_key_that_is_not_an_agent_token_parses_to_none(key: str) -> None:
    assert keys.parse_agent_token_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "ank/logs/car1",
        "ank/logs/car1/*",
        "ank/logs/car1/**",
        "ank/logs/*/db",
        "ank/logs/car1/db/stream",
        "ank/logs/car1/db/extra",
        "ank/state/car1/db",
    ],
)
def test_a_key_that_names_no_one_workloads_logs_parses_to_none(key: str) -> None:
    assert keys.parse_logs_key(key) is None


def test_names_with_odd_characters_round_trip_unless_they_split_the_key() -> None:
    # Names are validated where they enter (manifests, --name); the key
    # functions neither reject nor escape them: a newline or a space is one
    # chunk and round-trips, a slash makes two chunks and does not parse.
    for odd in ("a b", "a\nb", "café", "a.b-c_d"):
        assert keys.parse_logs_key(keys.logs_key("car1", odd)) == ("car1", odd)
        assert keys.parse_agent_token_key(keys.agent_token_key(odd)) == odd
    assert keys.parse_logs_key(keys.logs_key("car1", "a/b")) is None
    assert keys.parse_state_key(keys.state_key("car1", "a/b")) is None


def test_every_family_of_the_table_has_a_builder_that_builds_its_shape() -> None:
    built = {
        keys.DESIRED,
        keys.CMD_APPLY,
        keys.CMD_DELETE,
        keys.CMD_STATE,
        keys.plan_key("<agent>"),
        keys.state_key("<agent>", "<wl>"),
        keys.state_key("", "<wl>"),
        keys.agent_token_key("<agent>"),
        keys.agent_status_key("<agent>"),
        keys.energy_key("<node>"),
        keys.bind_key("<wl>"),
        keys.health_key("<agent>", "<wl>"),
        keys.event_key("<kind>"),
        keys.logs_key("<agent>", "<wl>"),
        keys.logs_stream_key("<agent>", "<wl>"),
    }
    assert built == {f.key for f in keys.FAMILIES}


def test_every_grant_of_the_policy_is_a_key_of_the_table_or_a_wildcard_of_one() -> None:
    families = [f.key.replace("<agent>", "x").replace("<wl>", "x").replace("<node>", "x") for f in keys.FAMILIES]
    families = [f.replace("<kind>", "x") for f in families]
    for identity in policy.POLICY:
        for grants in policy.grants_of(identity, ["x"]).values():
            for grant in grants:
                wide = grant.replace("{agent}", "x")
                assert any(policy.includes(wide, f) for f in families), f"{identity}: {grant} covers no key family"


def test_internals_md_shows_the_table_of_schemas_keys() -> None:
    text = (ROOT / "docs" / "internals.md").read_text()
    assert keys.markdown_table() in text, "regenerate docs/internals.md's keys table from schemas.keys.markdown_table()"
