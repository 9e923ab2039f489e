"""Config: TOML < env < flags, documented defaults, and one-line errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from server.config import describe, load_settings, resolve_data_dir
from server.errors import ConfigError
from server.sections import DashboardSection


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tadbot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_documented_fixed_keys(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, ""), env={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8710)
    assert settings.llm.backend == "llama_cpp" and settings.llm.model_path == "models/llm.gguf"
    assert settings.llm.base_url == ""
    assert settings.fer.model_path == "models/fer.onnx"
    assert settings.stt.engine == "faster_whisper" and settings.stt.model == "whisper-tiny.en"


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\n[llm]\nmodel_path = "a.gguf"\n')
    env = {
        "TADBOT_SERVER__PORT": "9100",
        "TADBOT_LLM__MODEL_PATH": "b.gguf",
        "TADBOT_LLM__TEMPERATURE": "0.2",
    }
    settings = load_settings(path, env=env, overrides={"server": {"port": 9200}})
    assert settings.server.port == 9200
    assert settings.server.host == "0.0.0.0"
    assert settings.llm.model_path == "b.gguf"
    assert settings.llm.temperature == 0.2


def test_data_dir_resolution(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    assert load_settings(path, env={"TADBOT_DATA_DIR": "/srv/x"}).data_path == Path("/srv/x")
    assert load_settings(
        path, env={"TADBOT_SERVER__DATA_DIR": "/srv/y", "TADBOT_DATA_DIR": "/srv/x"}
    ).data_path == Path("/srv/y")
    assert resolve_data_dir("", env={"STATE_DIRECTORY": "/var/lib/tadbot"}) == Path("/var/lib/tadbot")
    assert resolve_data_dir("", env={}) == Path("data")


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ('[server]\nport = "eighty"\n', {}, "server.port = 'eighty': expected an integer"),
        ("[server]\nport = 70000\n", {}, "server.port = 70000: must be between 1 and 65535"),
        ('[llm]\nbackend = "gpt"\n', {}, "llm.backend = 'gpt': allowed values are llama_cpp, openai"),
        ("[llm]\ncolour = 1\n", {}, "llm.colour: unknown key"),
        ("[nonsense]\n", {}, "[nonsense]: unknown config section"),
        ("", {"TADBOT_LLM__N_CTX": "lots"}, "llm.n_ctx = 'lots': expected an integer"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text), env=env)
    assert named in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_config_named_by_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TADBOT_CONFIG"):
        load_settings(env={"TADBOT_CONFIG": str(tmp_path / "absent.toml")})


def test_the_device_section_belongs_to_the_device(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, '[device]\ntoken = "x"\n'), env={})
    assert settings.server.port == 8710


def test_describe_prints_every_section_with_docs(tmp_path: Path) -> None:
    shown = describe(load_settings(_write(tmp_path, "[llm]\nn_ctx = 1024\n"), env={}))
    for section in ("[server]", "[llm]", "[fer]", "[stt]", "[memory]", "[persona]"):
        assert section in shown
    assert "n_ctx = 1024  # Context window" in shown


def test_the_server_ends_idle_sessions_after_half_an_hour_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, ""), env={}).server.session_idle_s == 1800.0
    set_in_file = _write(tmp_path, "[server]\nsession_idle_s = 60\n")
    assert load_settings(set_in_file, env={}).server.session_idle_s == 60.0
    off = load_settings(set_in_file, env={"TADBOT_SERVER__SESSION_IDLE_S": "0"})
    assert off.server.session_idle_s == 0.0
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, "[server]\nsession_idle_s = -1\n"), env={})
    assert "server.session_idle_s = -1.0: must be between 0 and" in caught.value.message


def test_config_show_masks_secrets_in_urls(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[safety]\nalert_url = "https://hooks.example.org/services/T0/B1/s3cretWebhook?key=k3y"\n'
        '[llm]\nbackend = "openai"\nbase_url = "http://alice:pa55word@10.0.0.2:8080/v1"\n',
    )
    shown = describe(load_settings(path, env={}))
    for secret in ("s3cretWebhook", "k3y", "services", "alice", "pa55word"):
        assert secret not in shown
    assert 'alert_url = "https://hooks.example.org/***"' in shown
    assert 'base_url = "http://10.0.0.2:8080/***"' in shown


def test_config_show_keeps_a_url_without_secrets_and_hides_an_unparsable_one(tmp_path: Path) -> None:
    plain = _write(
        tmp_path, '[llm]\nbase_url = "http://127.0.0.1:8080"\n[safety]\nalert_url = "not a url s3cret"\n'
    )
    shown = describe(load_settings(plain, env={}))
    assert 'base_url = "http://127.0.0.1:8080"' in shown
    assert 'alert_url = "********"' in shown


def test_the_dashboard_keys_default_and_follow_the_environment(tmp_path: Path) -> None:
    dashboard = load_settings(_write(tmp_path, ""), env={}).dashboard
    assert dashboard == DashboardSection("", 30, 12, 5, 15)
    env = {"TADBOT_DASHBOARD__TIMEZONE": "Europe/London", "TADBOT_DASHBOARD__IDLE_MINUTES": "10"}
    set_in_file = _write(tmp_path, "[dashboard]\nmax_hours = 8\nlockout_failures = 3\nlockout_minutes = 60\n")
    dashboard = load_settings(set_in_file, env=env).dashboard
    assert dashboard == DashboardSection("Europe/London", 10, 8, 3, 60)
    assert "[dashboard]" in describe(load_settings(set_in_file, env=env))


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "europe/london", "Europe", "/etc/localtime", "../UTC"])
def test_an_unknown_time_zone_stops_start_up_naming_the_key(tmp_path: Path, zone: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, f'[dashboard]\ntimezone = "{zone}"\n'), env={})
    assert f"dashboard.timezone = {zone!r}: not an IANA time zone" in caught.value.message
    assert '"Europe/London"' in caught.value.message
    assert "\n" not in caught.value.message


def test_dashboard_ranges_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, ""), env={"TADBOT_DASHBOARD__IDLE_MINUTES": "4"})
    assert caught.value.message == "dashboard.idle_minutes = 4: must be between 5 and 720"


def test_times_are_shown_in_the_clinic_zone_else_the_servers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    london = DashboardSection(timezone="Europe/London").tzinfo()
    assert london == ZoneInfo("Europe/London")
    assert datetime(2024, 7, 1, tzinfo=london).utcoffset() == timedelta(hours=1)
    assert datetime(2024, 1, 1, tzinfo=london).utcoffset() == timedelta(0)
    local = DashboardSection().tzinfo()
    assert datetime.now(local).utcoffset() == datetime.now().astimezone().utcoffset()
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert DashboardSection().tzinfo() == ZoneInfo("Asia/Tokyo")


def test_the_readme_lists_the_dashboard_keys_and_the_tls_pair_at_their_defaults() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[dashboard]" in b)
    documented = tomllib.loads(block)
    assert documented["dashboard"] == dataclasses.asdict(DashboardSection())
    assert (documented["server"]["certfile"], documented["server"]["keyfile"]) == ("", "")
