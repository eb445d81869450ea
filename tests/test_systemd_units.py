"""The systemd units and the example config: required keys (pure), and systemd-analyze when present."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from tunerd.wire import protocol

SYSTEMD = pathlib.Path(__file__).parents[1] / "systemd"
UNITS = ["tunerd.service", "tunerd@.service"]
ANALYZE = shutil.which("systemd-analyze")


def parse_unit(path: pathlib.Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat); continuation lines joined, comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def last(unit: dict, key: str, section: str = "Service") -> str:
    return unit[section][key][-1]


@pytest.mark.parametrize("name", UNITS)
def test_unit_has_the_required_keys(name):
    unit = parse_unit(SYSTEMD / name)
    service = unit["Service"]
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID", "WatchdogSec": "30",
        "Restart": "on-failure", "User": "tunerd", "Group": "tunerd", "RuntimeDirectoryMode": "0750",
        "UMask": "0007", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "IPAddressDeny": "any", "IPAddressAllow": "localhost", "DevicePolicy": "closed",
        "ConfigurationDirectory": "tunerd", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert last(unit, key) == value, key
    assert "RestartSec" in service and "DynamicUser" not in service
    assert "@system-service" in service["SystemCallFilter"][0]
    # CPU pinning needs sched_setaffinity (@resources); no later filter may take it away
    assert not any("@resources" in f for f in service["SystemCallFilter"] if f.startswith("~"))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    exec_start = last(unit, "ExecStart").split()
    assert exec_start[0] == "/usr/local/bin/tunerd" and exec_start[1] == "serve"
    # the model and calibration cache must be writable under ProtectSystem=strict: systemd's own
    # cache directory, named to tunerd through TUNERD_CACHE_DIR
    assert last(unit, "CacheDirectory") == "tunerd"
    assert "TUNERD_CACHE_DIR=%C/tunerd" in service["Environment"]


def test_single_and_template_paths():
    single = parse_unit(SYSTEMD / "tunerd.service")
    assert last(single, "ExecStart").endswith("serve --config /etc/tunerd/tunerd.toml")
    assert (last(single, "RuntimeDirectory"), last(single, "StateDirectory")) == ("tunerd", "tunerd")
    template = parse_unit(SYSTEMD / "tunerd@.service")
    args = last(template, "ExecStart").split()
    option = {args[i]: args[i + 1] for i in range(2, len(args) - 1, 2)}
    assert option == {"--config": "/etc/tunerd/%i.toml", "--frames": "ipc:///run/tunerd/%i/frames.sock",
                      "--control": "ipc:///run/tunerd/%i/control.sock", "--state-dir": "/var/lib/tunerd/%i"}
    assert (last(template, "RuntimeDirectory"), last(template, "StateDirectory")) == ("tunerd/%i", "tunerd/%i")
    assert "%i" in template["Unit"]["Description"][0]


def test_example_config_keys_and_defaults():
    config = tomllib.loads((SYSTEMD / "tunerd.toml").read_text())
    assert set(config) == {"daemon", "model", "platform", "tuner", "limits", "security", "metrics"}
    assert config["daemon"]["frames"] == protocol.DEFAULT_FRAMES_ADDRESS
    assert config["daemon"]["control"] == protocol.DEFAULT_CONTROL_ADDRESS
    assert config["daemon"]["state_dir"] == "/var/lib/tunerd" and config["daemon"]["log_level"] == "info"
    assert {"source", "input_size"} <= set(config["model"])
    assert {"spec", "sysfs_root"} <= set(config["platform"]) and config["platform"]["sysfs_root"] == "/sys"
    assert {"budget", "seed"} <= set(config["tuner"])
    assert config["limits"]["queue_depth"] == 64
    assert config["limits"]["max_message_bytes"] == protocol.DEFAULT_MAX_MESSAGE_BYTES
    assert set(config["security"]) == {"curve_secret_key_file", "curve_client_keys_dir"}
    assert config["metrics"] == {"listen": ""}      # off unless asked for
    for table in config.values():    # flat: no nested tables
        assert not any(isinstance(v, dict) for v in table.values())


def _installed_copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    """The unit with ExecStart pointing at a tunerd that exists here (verify checks the binary)."""
    binary = shutil.which("tunerd") or str(pathlib.Path(sys.executable).with_name("tunerd"))
    if not pathlib.Path(binary).exists():
        binary = sys.executable
    text = (SYSTEMD / name).read_text().replace("/usr/local/bin/tunerd", binary)
    target = tmp_path / name.replace("@.", "@test.")
    target.write_text(text)
    return target


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name, tmp_path):
    unit = _installed_copy(name, tmp_path)
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if unit.name in line or "Unknown" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_security_is_ok(name, tmp_path):
    unit = _installed_copy(name, tmp_path)
    proc = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                          timeout=60)
    if "--offline" in proc.stderr or "unrecognized option" in proc.stderr:
        pytest.skip("this systemd-analyze cannot review unit files offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    # MEDIUM is the target; the units get 1.0 OK with systemd 252
    assert float(match.group(1)) <= 3.0, match.group(0)


def test_example_config_is_what_the_daemon_reads():
    config_module = pytest.importorskip("tunerd.daemon.config")
    example = tomllib.loads((SYSTEMD / "tunerd.toml").read_text())
    # every key the daemon reads is shown (and documented) in the example, and nothing else
    assert {s: set(keys) for s, keys in config_module.SECTIONS.items()} == {s: set(t) for s, t in example.items()}
    cfg = config_module.load_config(str(SYSTEMD / "tunerd.toml"), required=True)
    defaults = config_module.DaemonConfig()
    for key in config_module.DaemonConfig.__dataclass_fields__:
        assert getattr(cfg, key) == getattr(defaults, key), f"the example shows {key} other than its default"


def test_a_window_min_seconds_out_of_range_is_refused_by_name(tmp_path):
    config_module = pytest.importorskip("tunerd.daemon.config")
    from tunerd.errors import ConfigError
    path = tmp_path / "t.toml"
    for bad in (-1, 61):
        path.write_text(f"[tuner]\nwindow_min_seconds = {bad}\n")
        with pytest.raises(ConfigError, match="window_min_seconds"):
            config_module.load_config(str(path), required=True)
    path.write_text("[tuner]\nwindow_min_seconds = 0\n")
    assert config_module.load_config(str(path), required=True).window_min_seconds == 0


def test_place_self_is_a_boolean_that_can_be_turned_off(tmp_path):
    config_module = pytest.importorskip("tunerd.daemon.config")
    from tunerd.errors import ConfigError
    path = tmp_path / "t.toml"
    path.write_text("[platform]\nplace_self = false\n")
    assert config_module.load_config(str(path), required=True).place_self is False
    path.write_text("[platform]\nplace_self = 1\n")
    with pytest.raises(ConfigError, match="place_self"):
        config_module.load_config(str(path), required=True)
