"""The convergence plot: episodes split at retunes (pure), the PNG from `tunerctl history --plot` and
from tools/plot_convergence.py on a saved `history --json`, and the errors without matplotlib."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_daemon import FakeDaemon
from tunerd.errors import TunerdError
from tunerd.wire import convergence_plot as cp
from tunerd.wire import ctl

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history_reply() -> dict:
    """A search (baseline first, as the tuner measures it), convergence, a retune after a throttle."""
    fps = [20.0, 24.0, 27.5, 11.0, 28.4, 28.4, 12.0, 15.5, 16.1, 16.1]
    configs = ["0-9@big:1", "0-4@little:1 | 5-9@big:1", "0-3@little:1 | 4-9@big:1", "0-9@little:1",
               "0-2@little:1 | 3-9@big:1", "0-2@little:1 | 3-9@big:1", "0-9@big:1", "0-5@little:1 | 6-9@big:1",
               "0-4@little:1 | 5-9@big:1", "0-4@little:1 | 5-9@big:1"]
    states = ["tuning"] * 5 + ["converged", "retuning", "retuning", "retuning", "converged"]
    history = [{"index": i + 1, "time": 1000.0 + 2 * i, "fps": f, "config": c, "state": s}
               for i, (f, c, s) in enumerate(zip(fps, configs, states))]
    return {"history": history, "retunes": [{"after_evaluation": 6, "time": 1011.0,
                                             "reason": "cpufreq big: max 2000000 -> 1000000 kHz"}]}


def test_episodes_split_at_retunes_with_their_cause_and_baseline():
    first, second = cp.episodes(history_reply())
    assert first.cause is None and [p["index"] for p in first.points] == [1, 2, 3, 4, 5, 6]
    assert second.cause.startswith("cpufreq big") and second.start_time == 1011.0
    assert first.baseline_fps == 20.0 and second.baseline_fps == 12.0    # best single-cluster per episode
    # an early daemon's reply has no "retunes": split where the state turns to retuning
    reply = history_reply()
    del reply["retunes"]
    assert [len(e.points) for e in cp.episodes(reply)] == [6, 4]
    assert [len(e.points) for e in cp.episodes({**reply, "retunes": []})] == [10]   # none: one episode
    with pytest.raises(TunerdError, match="no evaluations"):
        cp.episodes({"history": []})


def assert_a_real_png(path: Path) -> None:
    matplotlib_image = pytest.importorskip("matplotlib.image")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    pixels = matplotlib_image.imread(str(path))
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 900
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 30          # points, lines, text: not a blank or single-colour image


def test_tunerctl_history_plot_writes_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    with FakeDaemon() as d:
        d.history = history_reply()["history"]
        out = tmp_path / "c.png"
        assert ctl.main(["--control", d.control_address, "history", "--plot", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 10 evaluations, 1 retune"
    assert_a_real_png(out)
    with FakeDaemon() as d:
        d.history = []
        assert ctl.main(["--control", d.control_address, "history", "--plot", str(out)]) == 1
    assert "no evaluations to plot yet" in capsys.readouterr().err


def test_the_tool_plots_a_saved_history(tmp_path):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "h.json"
    saved.write_text(json.dumps(history_reply()))
    out = tmp_path / "c.png"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_convergence.py"), str(saved), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_a_real_png(out)
    saved.write_text("{not json")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_convergence.py"), str(saved), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and run.stderr.startswith("plot_convergence:")


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(TunerdError, match=r"tunerd\[plot\]"):
        cp.plot_convergence(history_reply(), str(tmp_path / "c.png"))


def test_an_unwritable_or_unknown_file_is_one_error(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(TunerdError, match="cannot write the plot"):
        cp.plot_convergence(history_reply(), str(tmp_path / "missing-dir" / "c.png"))
    with pytest.raises(TunerdError, match="cannot write the plot"):
        cp.plot_convergence(history_reply(), str(tmp_path / "c.notaformat"))
