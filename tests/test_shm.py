"""Shared-memory slot rings: layout, views, fd passing to a spawned process, nothing left behind."""
import multiprocessing
import os
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np
import pytest

from tunerd.pipeline.shm import PAGE, Ring, slot_size


def _ring_fds() -> list[str]:
    """This process's descriptors that point at ring memory."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "tunerd-ring" in target:
            out.append(target)
    return out


def _child(conn, n_slots, slot_bytes):
    ring = Ring.attach(7, n_slots, slot_bytes, recv_handle(conn))
    x = ring.view(1, (2, 3))
    conn.send(x.tolist())
    x *= 10                       # visible to the parent: same memory
    conn.send("written")
    ring.close()


def test_slot_size_rounds_to_pages():
    assert slot_size(0) == PAGE
    assert slot_size(1) == PAGE
    assert slot_size(PAGE) == PAGE
    assert slot_size(PAGE + 1) == 2 * PAGE
    with pytest.raises(ValueError):
        slot_size(-1)


def test_views_are_per_slot_and_checked():
    ring = Ring.create(0, 3, 100)
    try:
        assert ring.slot_bytes == PAGE and ring.nbytes == 3 * PAGE
        a, b = ring.view(0, (4, 5)), ring.view(1, (4, 5))
        a[:] = 1.0
        b[:] = 2.0
        assert a.dtype == np.float32 and float(a.sum()) == 20.0 and float(b.sum()) == 40.0
        assert ring.view(0, (4, 5)) is a                   # cached
        assert ring.view(0, (20,)).sum() == 20.0           # another shape, same bytes
        with pytest.raises(IndexError):
            ring.view(3, (1,))
        with pytest.raises(ValueError, match="does not fit"):
            ring.view(0, (PAGE,))
    finally:
        ring.close()
    ring.close()                                           # idempotent
    assert ring.closed


def test_ring_crosses_a_spawned_process_by_descriptor():
    before = set(os.listdir("/dev/shm"))
    ring = Ring.create(7, 2, 64)
    assert set(os.listdir("/dev/shm")) == before           # anonymous: no name to leak
    ring.view(1, (2, 3))[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_child, args=(child, ring.n_slots, ring.slot_bytes))
    proc.start()
    child.close()
    try:
        send_handle(parent, ring.fileno(), proc.pid)
        assert parent.poll(30), "child did not answer"
        assert parent.recv() == [[0, 1, 2], [3, 4, 5]]
        assert parent.recv() == "written"
        assert ring.view(1, (2, 3)).tolist() == [[0, 10, 20], [30, 40, 50]]
    finally:
        proc.join(10)
        parent.close()
    assert proc.exitcode == 0
    assert _ring_fds()
    ring.close()
    assert not _ring_fds()
    assert set(os.listdir("/dev/shm")) == before


def test_attach_takes_ownership_of_the_descriptor():
    ring = Ring.create(1, 1, 16)
    fd = os.dup(ring.fileno())
    other = Ring.attach(1, 1, ring.slot_bytes, fd)
    with pytest.raises(OSError):
        os.fstat(fd)                                       # closed by attach
    with pytest.raises(ValueError):
        other.fileno()
    other.view(0, (4,))[:] = 3.0
    assert ring.view(0, (4,)).tolist() == [3.0] * 4
    other.close()
    ring.close()


def test_a_ring_that_cannot_be_made_closes_its_descriptor():
    ring = Ring.create(1, 1, 16)
    fd = os.dup(ring.fileno())
    with pytest.raises(ValueError):
        Ring.attach(2, 0, ring.slot_bytes, fd)             # no slots: refused, and fd closed
    with pytest.raises(OSError):
        os.fstat(fd)
    ring.close()
