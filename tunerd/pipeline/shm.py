"""Shared-memory slot rings: the tensors crossing a pipeline cut, without copies or pickling.

A ring is ``n_slots`` fixed-size slots in one shared mapping. The producer stage writes its output
straight into a slot (``plan.run(x, out=ring.view(slot, shape))``) and the consumer reads its input
as a numpy view of the same slot; only the slot number travels between the processes.

Nothing ever has a name in ``/dev/shm`` for longer than it takes to create it: a ring is an anonymous
``memfd`` (Linux >= 3.17), or where that is missing a ``/dev/shm`` file unlinked right after it is
opened. Workers get the file descriptor over their control socket (SCM_RIGHTS) and map it, so the
memory lives exactly as long as some process maps it; a ``kill -9`` of any process, the parent
included, leaks nothing and the resource tracker is never involved.

Slots are page-aligned and sized for the largest tensor at any unit boundary of the model, so one
ring serves any cut and rings outlive pipeline reconfigurations.
"""
from __future__ import annotations

import mmap
import os
import uuid

import numpy as np

from ..errors import TunerdError

PAGE = mmap.PAGESIZE
NAME_PREFIX = "tunerd-ring"


def slot_size(nbytes: int) -> int:
    """``nbytes`` rounded up to whole pages (at least one)."""
    if nbytes < 0:
        raise ValueError(f"slot size must be >= 0, got {nbytes}")
    return max(PAGE, (int(nbytes) + PAGE - 1) // PAGE * PAGE)


def _anonymous_fd(size: int) -> int:
    """A file descriptor of ``size`` bytes of shared memory that no other process can find by name."""
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create(NAME_PREFIX, os.MFD_CLOEXEC)
        except OSError:
            fd = None  # e.g. seccomp forbids memfd_create: fall back to /dev/shm
        if fd is not None:
            try:
                os.ftruncate(fd, size)
            except OSError:
                os.close(fd)
                raise
            return fd
    path = f"/dev/shm/{NAME_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(path)  # NOTE: unlinked before anyone maps it: nothing can outlive its users
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class Ring:
    """``n_slots`` slots of ``slot_bytes`` bytes each in one shared mapping.

    ``Ring.create`` makes a new one (main process); ``Ring.attach`` maps one from a received file
    descriptor (worker). ``view(slot, shape)`` is a float32 array over the slot (cached per shape).
    """

    def __init__(self, ring_id: int, n_slots: int, slot_bytes: int, fd: int, *, keep_fd: bool):
        try:
            if n_slots < 1:
                raise ValueError(f"a ring needs at least one slot, got {n_slots}")
            if slot_bytes < 1 or slot_bytes % PAGE:
                raise ValueError(f"slot_bytes must be a positive multiple of {PAGE}, got {slot_bytes}")
            self.ring_id = int(ring_id)
            self.n_slots = int(n_slots)
            self.slot_bytes = int(slot_bytes)
            self.nbytes = self.n_slots * self.slot_bytes
            self._mm = mmap.mmap(fd, self.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)    # this object owns fd: nothing else would close it
            raise
        if keep_fd:
            self._fd: int | None = fd
        else:
            os.close(fd)   # the mapping keeps the memory alive
            self._fd = None
        self._views: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    @classmethod
    def create(cls, ring_id: int, n_slots: int, slot_bytes: int) -> "Ring":
        slot_bytes = slot_size(slot_bytes)
        try:
            fd = _anonymous_fd(n_slots * slot_bytes)
            return cls(ring_id, n_slots, slot_bytes, fd, keep_fd=True)
        except OSError as err:
            raise TunerdError(f"cannot create shared memory ({n_slots} x {slot_bytes} bytes): {err}") from err

    @classmethod
    def attach(cls, ring_id: int, n_slots: int, slot_bytes: int, fd: int) -> "Ring":
        """Map a ring from ``fd`` (which this call closes)."""
        return cls(ring_id, n_slots, slot_bytes, fd, keep_fd=False)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"ring {self.ring_id} has no file descriptor here (attached, or closed)")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._mm is None

    def view(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """A writable float32 view of slot ``slot`` shaped ``shape``."""
        key = (slot, tuple(shape))
        arr = self._views.get(key)
        if arr is None:
            if not 0 <= slot < self.n_slots:
                raise IndexError(f"slot {slot} is outside ring {self.ring_id} (0-{self.n_slots - 1})")
            count = int(np.prod(shape, dtype=np.int64))
            if count * 4 > self.slot_bytes:
                raise ValueError(f"shape {list(shape)} ({count * 4} bytes) does not fit a slot of "
                                 f"{self.slot_bytes} bytes")
            if self._mm is None:
                raise ValueError(f"ring {self.ring_id} is closed")
            arr = np.frombuffer(self._mm, np.float32, count, slot * self.slot_bytes).reshape(shape)
            self._views[key] = arr
        return arr

    def close(self) -> None:
        """Unmap (idempotent). Views handed out must be dropped first, else the map stays alive
        until they are garbage (mmap refuses to close under exported buffers)."""
        self._views.clear()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a view: the mapping goes when the view does
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"Ring({self.ring_id}, {self.n_slots} x {self.slot_bytes} B)"
