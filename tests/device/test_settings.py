from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from device.errors import DeviceConfigError
from device.settings import _CHECKS, DeviceSettings, load_settings, settings_to_toml


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "device.toml"  # not ./tadbot.toml, which would be found without being named
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults_without_any_file() -> None:
    settings = load_settings(env={})
    assert settings == DeviceSettings()
    assert settings.server_url == "http://127.0.0.1:8710"
    assert (settings.client, settings.tts_rate, settings.tts_volume, settings.camera_index) == (
        "",
        165,
        1.0,
        0,
    )


def test_every_field_has_a_doc_and_a_check() -> None:
    for spec in dataclasses.fields(DeviceSettings):
        assert spec.metadata.get("doc"), spec.name
    assert set(_CHECKS) == {spec.name for spec in dataclasses.fields(DeviceSettings)}


def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
[server]
port = 9999          # other sections belong to the server and are ignored here

[device]
server_url = "http://pi.local:8710"
client = "from-file"
tts_rate = 150
tts_volume = 1       # an integer is a fine float
camera_index = 2
""",
    )
    env = {
        "TADBOT_CONFIG": str(config),
        "TADBOT_DEVICE__TTS_RATE": "140",
        "TADBOT_DEVICE__CLIENT": "from-env",
    }
    settings = load_settings(env=env, overrides={"client": "from-flag", "camera_index": None, "token": "t0k"})
    assert settings.server_url == "http://pi.local:8710"  # file
    assert settings.tts_rate == 140  # env beats file, and is typed by the field
    assert settings.client == "from-flag"  # flag beats env
    assert settings.camera_index == 2  # a flag left out (None) does not override
    assert settings.tts_volume == 1.0 and isinstance(settings.tts_volume, float)
    assert settings.token == "t0k"


def test_explicit_path_beats_tadbot_config(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[device]\nclient = "explicit"\n', encoding="utf-8")
    env = {"TADBOT_CONFIG": str(_config(tmp_path, '[device]\nclient = "env-file"\n'))}
    assert load_settings(other, env=env).client == "explicit"


def test_local_tadbot_toml_is_the_last_fallback(tmp_path: Path) -> None:
    (tmp_path / "tadbot.toml").write_text(
        '[device]\nclient = "local"\n', encoding="utf-8"
    )  # tmp_path is the cwd
    if Path("/etc/tadbot/tadbot.toml").is_file():
        pytest.skip("/etc/tadbot/tadbot.toml exists on this machine and comes first")
    assert load_settings(env={}).client == "local"


@pytest.mark.parametrize(
    ("body", "env", "words"),
    [
        ("tts_rate = 1000", {}, ["tts_rate", "1000", "50 to 400"]),
        ('tts_rate = "fast"', {}, ["tts_rate", "'fast'", "integer"]),
        ("tts_volume = 1.5", {}, ["tts_volume", "1.5", "0.0 to 1.0"]),
        ('server_url = "pi.local:8710"', {}, ["server_url", "pi.local:8710", "http://"]),
        ('client = "Jane Doe"', {}, ["client", "Jane Doe", "A-Z"]),
        ("camera_index = -3", {}, ["camera_index", "-3", ">= -1"]),
        ("tts_rate = true", {}, ["tts_rate", "True", "integer"]),
        ("", {"TADBOT_DEVICE__REQUEST_TIMEOUT_S": "soon"}, ["request_timeout_s", "soon", "TADBOT_DEVICE__"]),
        ("", {"TADBOT_DEVICE__LANGUAGE": "english!"}, ["language", "english!", "en-GB"]),
        ('locale = "en-GB"', {}, ["locale", "en-GB", "two-letter country code"]),
        ("max_utterance_s = 90", {}, ["max_utterance_s", "90", "from 1 to 60", "server"]),
        ('server_url = "http://127.0.0.1:99999"', {}, ["server_url", "99999", "valid port"]),
        ('server_url = "http://:8710"', {}, ["server_url", "http://:8710", "host"]),
        ('token = "pässwörd"', {}, ["token", "***", "ASCII"]),
        ('speaker_device = " USB"', {}, ["speaker_device", "' USB'", "ALSA output name"]),
        ('mic_device = "USB\\n"', {}, ["mic_device", "'USB\\n'", "microphone's name"]),
        ("earcons = 1", {}, ["earcons", "1", "true or false"]),
        ("", {"TADBOT_DEVICE__EARCONS": "maybe"}, ["earcons", "maybe", "true or false"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, body: str, env: dict[str, str], words: list[str]
) -> None:
    config = _config(tmp_path, f"[device]\n{body}\n")
    with pytest.raises(DeviceConfigError) as caught:
        load_settings(config, env=env)
    message = caught.value.message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(
        DeviceConfigError, match=r"unknown \[device\] key 'tts_speed'.*known keys: server_url"
    ):
        load_settings(_config(tmp_path, "[device]\ntts_speed = 3\n"), env={})
    with pytest.raises(DeviceConfigError, match=r"'colour'.*TADBOT_DEVICE__COLOUR"):
        load_settings(env={"TADBOT_DEVICE__COLOUR": "blue"})


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match=r"missing\.toml does not exist"):
        load_settings(env={"TADBOT_CONFIG": str(tmp_path / "missing.toml")})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError, match=r"cannot read config file .*device\.toml"):
        load_settings(_config(tmp_path, "[device\n"), env={})


def test_token_is_masked_in_errors_and_in_the_printed_config(tmp_path: Path) -> None:
    with pytest.raises(DeviceConfigError) as caught:
        load_settings(env={"TADBOT_DEVICE__TOKEN": "secret value"})
    assert "secret" not in caught.value.message
    text = settings_to_toml(load_settings(env={"TADBOT_DEVICE__TOKEN": "s3cret"}))
    assert "s3cret" not in text and 'token = "********"' in text
    assert "tts_rate = 165" in text and "# Speaking rate in words per minute; slower is calmer." in text


def test_max_utterance_s_reaches_the_servers_limit_and_no_further() -> None:
    assert load_settings(env={"TADBOT_DEVICE__MAX_UTTERANCE_S": "60"}).max_utterance_s == 60.0
    with pytest.raises(DeviceConfigError, match=r"invalid \[device\] max_utterance_s = 60\.5 "):
        load_settings(env={"TADBOT_DEVICE__MAX_UTTERANCE_S": "60.5"})


def test_readme_lists_every_device_key_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[device]" in b)
    assert tomllib.loads(block)["device"] == dataclasses.asdict(DeviceSettings())
