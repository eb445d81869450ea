"""tunerctl: output, JSON, exit codes (3 not running, 4 version mismatch), watch, against the fake daemon."""
from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fake_daemon import STATUS, FakeDaemon
from tunerd.wire import ctl

REQUIRED = ("state", "config", "best", "evaluations", "frames_served", "retunes", "platform")


@pytest.fixture
def daemon():
    with FakeDaemon() as d:
        yield d


def run(daemon, *argv, out=None):
    return ctl.main(["--control", daemon.control_address, "--timeout", "3", *argv], out=out)


def test_status_shows_what_an_operator_needs(daemon, capsys):
    assert run(daemon, "status") == 0
    text = capsys.readouterr().out
    for needle in ("tuning", "emulate:big=0@1.0,little=1@0.4", "big: cpus 0", "little: cpus 1", "speed 0.40",
                   "2000 MHz", "thermal_zone0 48 C", "squeezenet (zoo:squeezenet, 18 units)",
                   "0-9@big:1 | 10-17@little:1", "41.5 fps", "0-11@big:1 | 12-17@little:1", "44.0 fps",
                   "generation 3", "24 evaluations", "1 retune", "1,234 frames", "daemon on cpus 0", "1h 02m 03s"):
        assert needle in text, needle
    assert any(line.strip().startswith("progress") and "▁" in line and "█" in line for line in text.splitlines())


def test_status_json_is_the_daemons_map(daemon, capsys):
    assert run(daemon, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert all(key in status for key in REQUIRED)
    assert status == {k: v for k, v in STATUS.items()}
    assert set(status["best"]) >= {"config", "fps"}


def test_status_renders_a_minimal_map():
    text = ctl.render_status({"state": "idle", "config": None, "best": {"config": None, "fps": None},
                              "evaluations": 0, "frames_served": 0, "retunes": 0, "platform": "auto"})
    assert "idle" in text and "auto" in text and "- fps" in text and "0 frames" in text
    assert "daemon on" not in text and "gain" not in text


def test_status_shows_what_tuning_earned():
    text = ctl.render_status({"state": "converged", "config": "0-3@big:1 | 4-9@little:1", "gain": {
        "config": "0-3@big:1 | 4-9@little:1", "fps": 28.4,
        "single_cluster": {"config": "0-9@big:1", "fps": 19.0}, "ratio": 28.4 / 19.0}})
    assert "gain      1.49x over the best single cluster, 0-9@big:1 (19.0 fps)" in text
    assert "gain" not in ctl.render_status({"gain": {"ratio": None}})


def test_history_accepts_the_early_key_name():
    class Ctl:
        def call(self, cmd, **args):
            return {"evaluations": [{"index": 0, "time": 0.0, "state": "tuning", "config": "0-1@big:1", "fps": 1.0}]}

    class Args:
        json, last = False, 0

    out = io.StringIO()
    assert ctl.cmd_history(Ctl(), Args(), out) == 0
    assert "0-1@big:1" in out.getvalue()


def test_sparkline():
    assert ctl.sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert ctl.sparkline([]) == ""
    assert len(set(ctl.sparkline([3, 3, 3]))) == 1
    assert len(ctl.sparkline(range(1000), width=40)) == 40
    assert ctl.sparkline([1, 8], ascii=True) == "_#"
    assert ctl.compact_cpus([4, 5, 6, 7, 0, 2]) == "0,2,4-7"


def test_history_table_and_json(daemon, capsys):
    assert run(daemon, "history") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "time", "state", "fps", "config"] and len(lines) == 1 + 8
    assert "44.00" in lines[7] and "0-11@big:1 | 12-17@little:1" in lines[7]
    assert run(daemon, "history", "--json", "--last", "3") == 0
    evaluations = json.loads(capsys.readouterr().out)["history"]
    assert [e["index"] for e in evaluations] == [5, 6, 7]
    assert all({"index", "time", "state", "config", "fps"} <= set(e) for e in evaluations)


def test_pin_unpin_retune_print_one_line(daemon, capsys):
    assert run(daemon, "pin", "0-17@big:1") == 0
    assert capsys.readouterr().out == "pinned 0-17@big:1 (epoch 8)\n"
    assert run(daemon, "unpin") == 0
    assert capsys.readouterr().out == "unpinned; state tuning\n"
    assert run(daemon, "retune") == 0
    assert capsys.readouterr().out == "retune requested; state retuning\n"
    assert daemon.commands == ["hello", "pin", "hello", "unpin", "hello", "retune"]


def test_error_reply_exits_1_with_one_line(daemon, capsys):
    assert run(daemon, "pin", "rubbish") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("tunerctl pin: bad_config:")


def test_not_running_exits_3(tmp_path, capsys, monkeypatch):
    address = f"ipc://{tmp_path}/control.sock"
    assert ctl.main(["--control", address, "status"]) == 3
    assert capsys.readouterr().err == f"tunerd is not running (no answer on {address})\n"
    monkeypatch.setenv("TUNERD_CONTROL", address)      # the environment names the default
    assert ctl.main(["status", "--json"]) == 3
    assert capsys.readouterr().out == ""


@pytest.mark.skipif(os.path.exists("/run/tunerd/control.sock"), reason="a tunerd runs on this machine")
def test_not_running_on_the_default_address(capsys, monkeypatch):
    monkeypatch.delenv("TUNERD_CONTROL", raising=False)
    assert ctl.main(["status"]) == 3
    assert capsys.readouterr().err == "tunerd is not running (no answer on ipc:///run/tunerd/control.sock)\n"
    assert ctl.main(["-i", "resnet50", "status"]) == 3
    assert "ipc:///run/tunerd/resnet50/control.sock" in capsys.readouterr().err


def test_version_mismatch_exits_4(capsys):
    with FakeDaemon(protocol_version=2) as d:
        assert ctl.main(["--control", d.control_address, "status"]) == 4
    err = capsys.readouterr().err
    assert "mismatch" in err and err.count("\n") == 1


def test_usage_errors_exit_2(capsys):
    assert ctl.main([]) == 2
    for argv in (["bogus"], ["--control", "http://x", "status"], ["--timeout", "-1", "status"], ["pin"]):
        with pytest.raises(SystemExit) as info:
            ctl.main(argv)
        assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        ctl.main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "exit status" in help_text and "3 tunerd not running" in help_text and "watch" in help_text


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_watch_until_converged(capsys):
    updates = [{}, {"state": "tuning", "evaluations": 30}, {"state": "converged", "evaluations": 40}]
    with FakeDaemon(status_updates=updates) as d:
        assert run(d, "watch", "--interval", "0.01") == 0
        lines = capsys.readouterr().out.splitlines()       # not a TTY: plain lines, one per change
        assert len(lines) == 3 and "converged" in lines[-1] and "evals=40" in lines[-1]
        tty = Tty()
        assert run(d, "watch", "--interval", "0.01", out=tty) == 0
        assert tty.getvalue().startswith(ctl.CLEAR) and "converged" in tty.getvalue()


def test_watch_interrupted_exits_130(daemon, monkeypatch, capsys):
    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(ctl.time, "sleep", interrupt)
    assert run(daemon, "watch") == 130
    assert "interrupted" in capsys.readouterr().err


def test_version_command(daemon, capsys):
    assert run(daemon, "version") == 0
    assert "tunerd 0.1.0-fake (protocol 1)" in capsys.readouterr().out


def test_entry_point_prints_no_traceback(tmp_path):
    address = f"ipc://{tmp_path}/nothing.sock"
    proc = subprocess.run([sys.executable, "-m", "tunerd.wire.ctl", "--control", address, "status"],
                          capture_output=True, text=True, timeout=30,
                          cwd=pathlib.Path(__file__).parents[1])
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr == f"tunerd is not running (no answer on {address})\n"
