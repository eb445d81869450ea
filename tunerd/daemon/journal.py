"""Log lines the systemd journal files at their priority, plain lines everywhere else.

systemd connects a service's stderr to the journal and says so in ``JOURNAL_STREAM``
(``DEVICE:INODE`` of that stream). A line there that starts with ``<N>`` (sd-daemon(3): 3 error,
4 warning, 6 info, 7 debug) is filed at priority N, so ``journalctl -p warning -u tunerd`` shows the
warnings and errors alone; without the prefix every line is info. The prefix is added only when
stderr *is* the stream systemd named: a daemon started from a shell inside a unit's environment, or
with its stderr redirected, inherits the variable but writes somewhere else.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"        # the journal shows the priority itself
# sd-daemon(3) priorities (syslog's): what journalctl -p filters on
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return DEBUG_PRIORITY


def is_journal_stream(stream: TextIO, environ=os.environ) -> bool:
    """Whether ``stream`` is the one ``JOURNAL_STREAM`` names (device and inode match)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):    # closed, or not a file (pytest's capture)
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback's too) prefixed with the record's priority: the journal
    files each line as an entry of its own."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None, *, replace: bool = True,
                      environ=os.environ) -> bool:
    """The root logger writes to ``stream`` (stderr) at ``level``, with priorities when ``stream``
    is systemd's journal stream. ``replace``: handlers set before go (`tunerd serve` after the
    command line's set-up); else, as ``logging.basicConfig``, nothing changes where a handler is
    set already (an embedding program's, a test's). Returns whether the priorities are on."""
    stream = stream or sys.stderr
    root = logging.getLogger()
    if root.handlers and not replace:
        return False
    journal = is_journal_stream(stream, environ)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return journal


def error_line(text: str, stream: TextIO | None = None) -> str:
    """A one-line error for ``stream`` (stderr): with the error priority in the journal."""
    return f"<3>{text}" if is_journal_stream(stream or sys.stderr) else text
