"""The daemon's config file: what "not set" means, and mistakes that must be errors."""
from __future__ import annotations

import pytest

from tunerd.daemon.config import load_config
from tunerd.errors import ConfigError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "tunerd.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("section, key", [("daemon", "control"), ("daemon", "frames"), ("daemon", "log_level"),
                                          ("daemon", "state_dir"), ("model", "source"), ("platform", "spec"),
                                          ("platform", "sysfs_root")])
def test_an_empty_string_where_a_value_is_needed_is_an_error(tmp_path, section, key):
    with pytest.raises(ConfigError, match=f"{key} in \\[{section}\\] must not be empty"):
        load_config(write(tmp_path, f'[{section}]\n{key} = ""\n'), required=True)


def test_an_empty_string_unsets_an_optional_key(tmp_path):
    cfg = load_config(write(tmp_path, '[tuner]\npin = ""\n[security]\ncurve_secret_key_file = ""\n'
                                      '[model]\ninput_size = 0\n'), required=True)
    assert cfg.pin is None and cfg.curve_secret_key_file is None and cfg.input_size is None


def test_frames_and_control_must_differ(tmp_path):
    same = "ipc:///tmp/tunerd-test-same.sock"
    with pytest.raises(ConfigError, match="two addresses"):
        load_config(write(tmp_path, f'[daemon]\nframes = "{same}"\ncontrol = "{same}"\n'), required=True)
    with pytest.raises(ConfigError, match="two addresses"):
        load_config(None, {"frames": same, "control": same})
