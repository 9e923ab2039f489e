"""The systemd units and install.sh: systemd itself checks the units, and the installer is run for real
under --root, where it writes every file it would write on a Pi and skips what needs root and a booted
systemd (apt, the user, pip, systemctl); --dry-run shows that part's plan."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from device import liveness
from device.__main__ import build_parser as build_device_parser
from device.settings import DeviceSettings
from device.settings import load_settings as load_device_settings
from server.cli.main import build_parser
from server.config import Settings, load_settings
from tests.conftest import ROOT, tadbot

SYSTEMD = ROOT / "systemd"
INSTALL = SYSTEMD / "install.sh"
UNITS = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [u for u in UNITS if u.endswith(".service")]
TADBOT_BIN = "/opt/tadbot/bin/tadbot"
# What a --root install of each role writes: path under the root, and mode.
CONFIG_FILES = {"etc/tadbot/tadbot.toml": 0o644, "etc/tadbot/tadbot.env": 0o600}
SERVER_FILES = {
    f"etc/systemd/system/{unit}": 0o644
    for unit in ("tadbot-server.service", "tadbot-retention.service", "tadbot-retention.timer")
}
DEVICE_FILES = {"etc/systemd/system/tadbot-device.service": 0o644}
ROLE_FILES = {
    "server": CONFIG_FILES | SERVER_FILES,
    "device": CONFIG_FILES | DEVICE_FILES,
    "both": CONFIG_FILES | SERVER_FILES | DEVICE_FILES,
}


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value, in order: systemd lets a key repeat (DeviceAllow=)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in (SYSTEMD / name).read_text("utf-8").splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            sections[section][key].append(value)
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(min|s|)", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is absent: install Debian's systemd package (make test does)")
    return found


@pytest.fixture(scope="module")
def runnable_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as shipped, but for ExecStart's /opt/tadbot, which systemd-analyze wants to exist."""
    folder = tmp_path_factory.mktemp("units")
    stub = folder / "tadbot"
    stub.write_text("#!/bin/sh\n", "utf-8")
    stub.chmod(0o755)
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text("utf-8")
        (folder / unit).write_text(text.replace(TADBOT_BIN, str(stub)), "utf-8")
    return folder


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_accepts_every_line_of_the_unit(runnable_units: Path, unit: str) -> None:
    """verify exits 0 even for an unknown key or a bad value, so its output must be empty as well."""
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", "--generators=no", str(runnable_units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize("unit", SERVICES)
def test_services_are_hardened(runnable_units: Path, unit: str) -> None:
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(runnable_units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in done.stderr:
        pytest.skip(f"this systemd-analyze cannot review unit files offline: {done.stderr.strip()}")
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    # systemd's scale runs from 0 (locked down) to 10; below 4 it says "OK". The units score about 3.
    assert float(level.group(1)) < 4.0, done.stdout


@pytest.mark.parametrize("unit", SERVICES)
def test_each_exec_start_is_a_command_tadbot_knows(unit: str) -> None:
    (command,) = _unit(unit)["Service"]["ExecStart"]
    binary, *args = command.split()
    assert binary == TADBOT_BIN
    parsed, rest = build_parser().parse_known_args(args)
    if parsed.command == "device":  # a pass-through: the device's own parser reads the rest
        assert build_device_parser().parse_args(rest).verbose == 1
    else:
        assert rest == []


def test_retention_purges_by_the_configured_days_in_the_server_s_sandbox() -> None:
    retention = _unit("tadbot-retention.service")["Service"]
    server = _unit("tadbot-server.service")["Service"]
    assert retention["ExecStart"] == [f"{TADBOT_BIN} admin purge --older-than-config"]
    assert retention["Type"] == ["oneshot"]
    # The server's user, files, environment and hardening; not its start-up, watchdog, restarts or limits.
    own = {"ExecStart", "Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec"}
    own |= {"Restart", "RestartSec", "RestartPreventExitStatus", "MemoryHigh", "MemoryMax", "TasksMax"}
    assert {k: retention.get(k) for k in server.keys() - own} == {k: server[k] for k in server.keys() - own}
    timer = _unit("tadbot-retention.timer")["Timer"]
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]


def test_the_server_unit_waits_for_ready_and_is_watched() -> None:
    service = _unit("tadbot-server.service")["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert _seconds(service["WatchdogSec"][0]) == 60
    assert _seconds(service["TimeoutStartSec"][0]) >= 300  # the models load for minutes on a Pi
    assert "MemoryDenyWriteExecute" not in service  # llama.cpp and onnxruntime may write code at run time
    assert service["PrivateDevices"] == ["true"] and service["ProtectSystem"] == ["strict"]


def test_the_device_watchdog_is_fed_by_a_supervisor_that_never_blocks() -> None:
    """Pings come every WatchdogSec/2 from the liveness thread, which only looks at the other threads'
    beats: the watchdog no longer has to outlast a turn's read (that is the conversation thread's own
    deadline), and the doctor finds the thread status in the unit's runtime directory."""
    unit = _unit("tadbot-device.service")
    service = unit["Service"]
    watchdog = _seconds(service["WatchdogSec"][0])
    assert liveness.TICK_S * 10 <= watchdog / 2 < DeviceSettings().request_timeout_s
    assert service["RuntimeDirectory"] == [liveness.UNIT_RUNTIME_DIR.name]
    assert liveness.UNIT_RUNTIME_DIR.parent == Path("/run")
    assert service["Type"] == ["notify"] and service["TimeoutStartSec"] == ["infinity"]
    assert service["PrivateDevices"] == ["false"] and service["DevicePolicy"] == ["closed"]
    assert service["DeviceAllow"] == ["char-alsa rw", "char-video4linux rw"]
    assert service["SupplementaryGroups"] == ["audio video"]
    assert service["RestartPreventExitStatus"] == ["2"]
    # Ordered after a server on the same box, but never needing one: it may live elsewhere.
    assert "tadbot-server.service" in unit["Unit"]["After"][0].split()
    assert not any("tadbot-server" in v for k in ("Requires", "Wants", "BindsTo") for v in unit["Unit"][k])


def _install(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """The installer as a person runs it: without CMAKE_ARGS, which a developer may have set."""
    base = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    done = subprocess.run(
        ["bash", str(INSTALL), *args],
        env={**base, "TADBOT_PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("role", ["both", "server", "device"])
def test_a_root_install_writes_exactly_the_role_s_files(tmp_path: Path, role: str) -> None:
    done = _install("--root", str(tmp_path), "--role", role)
    assert _files(tmp_path) == ROLE_FILES[role]
    for unit in Path(tmp_path, "etc/systemd/system").iterdir():
        assert unit.read_bytes() == (SYSTEMD / unit.name).read_bytes()
    assert (tmp_path / "var/lib/tadbot").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "var/lib/tadbot/models").is_dir()
    for skipped in ("apt packages", "system user tadbot", "systemctl daemon-reload", "start the services"):
        assert re.search(rf"^==> {skipped}.*\(skipped: --root\)$", done.stdout, re.M), done.stdout
    assert ("device token (skipped: --root)" in done.stdout) == (role == "both")


def test_running_it_again_changes_nothing(tmp_path: Path) -> None:
    _install("--root", str(tmp_path))
    before = _snapshot(tmp_path)
    again = _install("--root", str(tmp_path))
    assert _snapshot(tmp_path) == before
    reported = [line.strip() for line in again.stdout.splitlines() if line.startswith("    ")]
    assert reported and all(line.startswith("unchanged ") for line in reported), again.stdout
    for path in ROLE_FILES["both"]:
        assert f"unchanged {tmp_path / path}" in "\n".join(reported)


def test_an_edited_config_and_env_file_survive_a_rerun_and_a_changed_unit_is_put_back(tmp_path: Path) -> None:
    _install("--root", str(tmp_path))
    config, env = tmp_path / "etc/tadbot/tadbot.toml", tmp_path / "etc/tadbot/tadbot.env"
    config.write_text('[server]\nhost = "0.0.0.0"\n', "utf-8")
    env.write_text("TADBOT_DEVICE__TOKEN=tdb_kept\n", "utf-8")
    env.chmod(0o644)
    unit = tmp_path / "etc/systemd/system/tadbot-server.service"
    unit.write_text("stale\n", "utf-8")
    done = _install("--root", str(tmp_path))
    assert config.read_text("utf-8") == '[server]\nhost = "0.0.0.0"\n'
    assert env.read_text("utf-8") == "TADBOT_DEVICE__TOKEN=tdb_kept\n"
    assert env.stat().st_mode & 0o777 == 0o600  # it holds secrets, whatever happened to it
    assert unit.read_bytes() == (SYSTEMD / unit.name).read_bytes()
    assert f"updated {unit}" in done.stdout


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = _install("--root", str(root), "--dry-run")
    assert not root.exists()
    assert f"would write {root}/etc/tadbot/tadbot.toml" in done.stdout
    assert f"would install {root}/etc/systemd/system/tadbot-device.service" in done.stdout


def test_uninstall_removes_the_units_and_keeps_config_and_data_unless_purged(tmp_path: Path) -> None:
    _install("--root", str(tmp_path))
    kept = tmp_path / "var/lib/tadbot/tadbot.sqlite3"
    kept.write_bytes(b"records")
    _install("--root", str(tmp_path), "--uninstall")
    assert set(_files(tmp_path)) == {*CONFIG_FILES, "var/lib/tadbot/tadbot.sqlite3"}
    wheel = tmp_path / "var/cache/tadbot/wheels/llama-cpp-python-0.3.36-key/llama_cpp_python.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"wheel")
    _install("--root", str(tmp_path), "--uninstall")
    assert wheel.is_file(), "a reinstall reuses the compiled llama.cpp"
    _install("--root", str(tmp_path), "--uninstall", "--purge")
    assert _files(tmp_path) == {}
    for gone in ("etc/tadbot", "var/lib/tadbot", "var/cache/tadbot"):
        assert not (tmp_path / gone).exists(), gone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "kiosk"], "--role must be server, device or both"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--root"], "--root needs a directory"),
        (["--frobnicate"], "unknown option: --frobnicate"),
    ],
)
def test_bad_flags_stop_with_one_line(args: list[str], message: str) -> None:
    done = _install(*args, check=False)
    assert done.returncode == 1
    assert message in done.stderr


def test_the_plan_for_a_real_install(tmp_path: Path) -> None:
    """What --dry-run without --root would do to this machine: the part no test can run for real."""
    done = _install("--dry-run", "--role", "both", "--source", str(ROOT))
    plan = done.stdout
    portable = subprocess.run(
        ["bash", str(SYSTEMD / "llama-build.sh"), "--print-args"],
        env={k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "-DGGML_NATIVE=OFF" in portable
    assert f"llama.cpp's CMake options: {portable}" in plan
    build = (
        "would run: env TADBOT_WHEEL_CACHE=/var/cache/tadbot/wheels "
        f"bash {SYSTEMD}/llama-build.sh /opt/tadbot/bin/python"
    )
    install = f"would run: /opt/tadbot/bin/pip install '{ROOT}[server,device]'"
    assert build in plan and install in plan and plan.index(build) < plan.index(install)
    embedder = re.search(r"^EMBEDDER_PKG := (\S+)$", (ROOT / "Makefile").read_text("utf-8"), re.M)
    assert embedder and f"pip install --no-deps {embedder.group(1)}" in plan
    assert (
        "would run: systemctl enable tadbot-server.service tadbot-retention.timer tadbot-device.service"
        in plan
    )
    assert "would run as tadbot: /opt/tadbot/bin/tadbot models pull" in plan
    assert "would run as tadbot: /opt/tadbot/bin/tadbot doctor --role both" in plan
    assert plan.index("systemctl restart tadbot-server.service") < plan.index("doctor --role both")
    assert plan.index("doctor --role both") < plan.index("systemctl start --no-block tadbot-device.service")
    own = _install("--dry-run", "--role", "server", CMAKE_ARGS="-DGGML_BLAS=ON").stdout
    assert "llama.cpp's CMake options: -DGGML_BLAS=ON\n" in own, "a preset one wins"
    device = _install("--dry-run", "--role", "device").stdout
    assert "llama-build.sh" not in device, "the device does not run llama.cpp"
    no_models = _install("--dry-run", "--role", "both", "--no-models", "--no-start").stdout
    assert "would run as tadbot: /opt/tadbot/bin/tadbot models pull" not in no_models
    assert "skipped: --no-models" in no_models
    assert (
        "systemctl restart" not in no_models
        and "start the services and run tadbot doctor (skipped: --no-start)" in no_models
    )


def test_the_config_template_documents_every_key_at_its_default(tmp_path: Path) -> None:
    _install("--root", str(tmp_path))
    written = (tmp_path / "etc/tadbot/tadbot.toml").read_text("utf-8")
    assert tomllib.loads(written).keys() >= {"server", "llm", "device"}  # the sections; every key commented
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"^#(\w+ = )", r"\1", written, flags=re.M), "utf-8")
    explicit = tomllib.loads(uncommented.read_text("utf-8"))
    defaults = Settings()
    for section in explicit.keys() - {"device"}:
        assert explicit[section] == vars(getattr(defaults, section)), section
    assert explicit["device"] == vars(DeviceSettings())
    # Commented out or not, the file means the same: the defaults.
    as_written = load_settings(tmp_path / "etc/tadbot/tadbot.toml", env={})
    assert dataclasses.replace(load_settings(uncommented, env={}), source=as_written.source) == as_written
    assert load_device_settings(uncommented, env={}) == DeviceSettings()


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is absent: install Debian's shellcheck package (make test does)")
    done = subprocess.run(
        ["shellcheck", str(INSTALL), str(SYSTEMD / "llama-build.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_tadbot_install_runs_the_script_from_an_installed_wheel(tmp_path: Path) -> None:
    """The wheel carries systemd/ as server/systemd/ (pyproject's force-include); a copy laid out that way
    stands in for the installed package, since building a wheel would download hatchling."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["hatch"]["build"]
    assert include["targets"]["wheel"]["force-include"]["systemd"] == "server/systemd"
    site = tmp_path / "site-packages"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("server", "device"):
        shutil.copytree(ROOT / package, site / package, ignore=ignore)
    shutil.copytree(SYSTEMD, site / "server" / "systemd", ignore=ignore)
    root = tmp_path / "root"
    env = {**os.environ, "PYTHONPATH": str(site)}
    planned = tadbot("install", "--root", str(root), "--dry-run", env=env)
    assert planned.returncode == 0, planned.stderr
    assert "==> unit files in /etc/systemd/system" in planned.stdout and not root.exists()
    done = tadbot("install", "--root", str(root), "--role", "device", env=env)
    assert done.returncode == 0, done.stderr
    assert _files(root) == ROLE_FILES["device"]
    assert tadbot("install", "--help", env=env).stdout.startswith("Usage: sudo install.sh")


def test_tadbot_install_from_a_checkout(tmp_path: Path) -> None:
    done = tadbot("install", "--root", str(tmp_path), env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == ROLE_FILES["both"]
