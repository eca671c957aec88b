"""Ankaios's option layering for ank-server and ank-agent: command line >
environment > TOML file; inline PEM content; errors that name the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.agent import ankaios_options
from services.bus.ankaios_config import LayeredConfig
from services.bus.ankaios_tls import Pem


def test_command_line_beats_environment_beats_file(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('name = "from_file"\nserver_url = "http://file:1"\nrun_folder = "/f"\ninsecure = true\n')
    conf = LayeredConfig("ANKAGENT", "agent config", str(toml), {"ANKAGENT_SERVER_URL": "http://env:2"})
    assert conf.pick("cli", "name") == "cli"
    assert conf.pick(None, "name") == "from_file"
    assert conf.pick(None, "server_url") == "http://env:2"
    assert conf.pick(None, "missing") is None
    assert conf.flag(None, "insecure") is True
    assert conf.flag(False, "insecure") is False
    assert LayeredConfig("ANKAGENT", "agent config", None, {}).flag(None, "insecure") is False


def test_inline_pem_content_is_written_and_both_forms_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text('ca_pem_content = "CA"\ncrt_pem = "/c.pem"\nkey_pem = "/k.pem"\n')
    conf = LayeredConfig("ANKSERVER", "server config", str(toml), {})
    written: dict[str, str] = {}

    def write(content: str, name: str) -> str:
        written[name] = content
        return f"/written/{name}"

    assert conf.pem({}, False, write) == Pem("/written/ca_pem", "/c.pem", "/k.pem")
    assert written == {"ca_pem": "CA"}
    assert conf.pem({}, True, write) == Pem()
    with pytest.raises(ValueError, match="server config: give ca_pem or ca_pem_content, not both"):
        conf.pem({"ca_pem": "/other.pem"}, False, write)


@pytest.mark.parametrize("text", ["name = [unclosed", None])
def test_an_unreadable_config_is_an_error_naming_it(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "agent.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=f"cannot read agent config {path}"):
        LayeredConfig("ANKAGENT", "agent config", str(path), {})


def test_ank_agent_takes_its_name_and_run_folder_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANKAGENT_NAME", raising=False)
    monkeypatch.delenv("ANKAGENT_RUN_FOLDER", raising=False)
    toml = tmp_path / "agent.toml"
    toml.write_text(f'name = "agent_A"\nrun_folder = "{tmp_path}"\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--name")
    parser.add_argument("-s", "--server")
    parser.add_argument("--run-dir")
    ankaios_options.add_arguments(parser)
    args = parser.parse_args(["-x", str(toml), "-k"])
    ankaios_options.resolve(args, parser)
    assert (args.name, args.run_dir, args.insecure, args.pem) == ("agent_A", str(tmp_path / "agent_A_io"), True, Pem())


def test_a_setting_zenoh_refuses_is_an_error_naming_its_path() -> None:
    """The one way every configuration writer (client TLS, secured bus, ank-server's router) sets values."""
    import zenoh

    from services.bus import BusConfigError, insert_settings
    from services.bus.secure import SecureConfigError

    conf = zenoh.Config()
    assert insert_settings(conf, {"mode": "client"}) is conf
    with pytest.raises(BusConfigError, match="cannot set connect/endpoints: "):
        insert_settings(conf, {"connect/endpoints": "not a list"})
    with pytest.raises(SecureConfigError, match="cannot set no/such/path in the secured configuration: "):
        insert_settings(conf, {"no/such/path": 1}, error=SecureConfigError, where=" in the secured configuration")
