"""Log priorities for the systemd journal: sd-daemon ``<N>`` prefixes exactly when stderr is the
stream ``JOURNAL_STREAM`` names, plain lines otherwise; the daemon and the command line use them."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunerd.daemon import journal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from harness import BIN, MODEL, DaemonProcess  # noqa: E402


@pytest.fixture
def root_logger():
    """The root logger as the test found it (pytest's capture handlers), restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def stream_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def log_all_levels(path: Path, environ: dict) -> list[str]:
    with open(path, "w") as stream:
        on = journal.configure_logging("DEBUG", stream, environ=environ)
        log = logging.getLogger("tunerd")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        logging.getLogger().handlers[0].flush()
    return [on, *path.read_text().splitlines()]


def test_priorities_when_stderr_is_the_journal_stream(tmp_path, root_logger):
    path = tmp_path / "err"
    path.touch()
    on, *lines = log_all_levels(path, {"JOURNAL_STREAM": stream_id(path)})
    assert on
    assert lines[:5] == ["<7>tunerd: d", "<6>tunerd: i", "<4>tunerd: w", "<3>tunerd: e", "<2>tunerd: c"]
    # a traceback is many lines, and the journal files each line by itself: every one is an error
    trace = lines[5:]
    assert len(trace) > 3 and all(line.startswith("<3>") for line in trace), trace
    assert trace[-1] == "<3>ValueError: boom"


@pytest.mark.parametrize("environ", [{}, {"JOURNAL_STREAM": "1:2"}, {"JOURNAL_STREAM": "garbage"},
                                     {"JOURNAL_STREAM": ""}])
def test_plain_lines_elsewhere(tmp_path, root_logger, environ):
    # no journal, or a stream systemd named that stderr is not (a redirected or inherited variable)
    on, *lines = log_all_levels(tmp_path / "err", environ)
    assert not on
    assert lines[:4] == ["DEBUG tunerd: d", "INFO tunerd: i", "WARNING tunerd: w", "ERROR tunerd: e"]
    assert not any(re.match(r"<\d>", line) for line in lines)


def test_a_handler_already_there_stays_unless_replaced(tmp_path, root_logger):
    mine = logging.StreamHandler(open(os.devnull, "w"))
    for h in list(root_logger.handlers):
        root_logger.removeHandler(h)
    root_logger.addHandler(mine)
    assert journal.configure_logging("INFO", replace=False) is False and root_logger.handlers == [mine]
    journal.configure_logging("INFO")
    assert root_logger.handlers != [mine] and len(root_logger.handlers) == 1
    mine.stream.close()


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")
def test_the_daemon_under_journald_writes_every_line_with_its_priority(tmp_path):
    d = DaemonProcess(tmp_path, start=False)
    d.log_path.touch()                     # the daemon's stderr: the file systemd would have named
    d.env = {**os.environ, "JOURNAL_STREAM": stream_id(d.log_path)}
    with d.start():
        d.stop()
    lines = d.log_path.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>tunerd: tunerd ") and "starting" in line for line in lines)


def test_the_command_lines_one_line_error_is_an_error_in_the_journal(tmp_path):
    err = tmp_path / "err"
    err.touch()
    env = {**os.environ, "JOURNAL_STREAM": stream_id(err)}
    with open(err, "a") as stderr:
        rc = subprocess.run([str(BIN / "tunerd"), "serve", "--model", MODEL, "--metrics", "0.0.0.0:9464",
                             "--state-dir", str(tmp_path)], stderr=stderr, env=env, timeout=60).returncode
    assert rc == 1
    assert re.fullmatch(r"<3>tunerd serve: metrics address .* allow_remote.*\n", err.read_text())
