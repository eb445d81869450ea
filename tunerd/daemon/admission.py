"""Fair admission: which frames the daemon takes, and in which order they enter the pipeline.

Every client has its own queue of admitted frames waiting for the pipeline, and the pipeline takes
them round-robin between the clients with frames waiting, so a client that floods delays another
by at most one of its frames per turn, not by its whole backlog. Admission (``admit``):

- a client with ``client_cap`` frames admitted and not yet answered is refused (``busy``): that
  bound is its own doing, whoever else is connected;
- below it, a frame is admitted while the daemon holds fewer than ``queue_depth`` frames in all;
- when the daemon is full, a client below its *share* (``queue_depth`` over the clients with frames
  admitted) still gets in: the newest waiting frame of the client furthest over its share is
  answered ``busy`` instead (it has not entered the pipeline; it is answered exactly once, as
  every frame is). So a client within its share is never refused because another floods.

Pure bookkeeping: no sockets, no clock; the daemon sends the replies it is told to send.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator


@dataclass
class Decision:
    admitted: bool
    reason: str = ""                                    # why not, when not
    preempted: list[tuple[Hashable, int]] = field(default_factory=list)   # (client, seq) to answer busy


class Admission:
    def __init__(self, queue_depth: int, client_cap: int):
        if queue_depth < 1 or client_cap < 1:
            raise ValueError(f"queue_depth and client_cap must be >= 1, got {queue_depth}, {client_cap}")
        self.queue_depth = queue_depth
        self.client_cap = client_cap
        self._waiting: dict[Hashable, deque[tuple[int, Any]]] = {}
        self._turns: deque[Hashable] = deque()          # clients with frames waiting, in turn order
        self._admitted: dict[Hashable, int] = {}        # client -> frames admitted, not yet answered
        self.queued = 0                                 # frames waiting for the pipeline, all clients
        self.total = 0                                  # frames admitted, not yet answered, all clients

    # -- admission ---------------------------------------------------------------------------------
    def share(self, client: Hashable) -> int:
        clients = len(self._admitted) + (client not in self._admitted)
        return max(1, self.queue_depth // clients)

    def admit(self, client: Hashable, seq: int, frame: Any) -> Decision:
        n = self._admitted.get(client, 0)
        if n >= self.client_cap:
            return Decision(False, f"{n} frames of this client in the daemon (its cap: max_client_frames "
                                   f"{self.client_cap})")
        preempted = []
        if self.total >= self.queue_depth:
            victim = self._furthest_over_share(client) if n < self.share(client) else None
            if victim is None:
                return Decision(False, f"admission queue full ({self.queue_depth} frames)")
            vseq, _ = self._waiting[victim].pop()
            self._left_queue(victim)
            self.done(victim)
            preempted.append((victim, vseq))
        self._admitted[client] = n + 1
        self.total += 1
        self._enqueue(client, seq, frame, front=False)
        return Decision(True, preempted=preempted)

    def _furthest_over_share(self, client: Hashable) -> Hashable | None:
        share = self.share(client)
        over = [(self._admitted[c] - share, c) for c, q in self._waiting.items()
                if c != client and q and self._admitted[c] > share]
        return max(over, key=lambda t: t[0])[1] if over else None

    # -- the pipeline's side ---------------------------------------------------------------------
    def next(self) -> tuple[Hashable, int, Any] | None:
        """The next frame for the pipeline: the head of the queue of the client whose turn it is."""
        if not self._turns:
            return None
        client = self._turns.popleft()
        seq, frame = self._waiting[client].popleft()
        self._left_queue(client)
        if self._waiting.get(client):
            self._turns.append(client)                   # its next frame waits for the next round
        return client, seq, frame

    def put_back(self, client: Hashable, seq: int, frame: Any) -> None:
        """A frame ``next`` gave that the pipeline could not take now: first again, as it was."""
        self._enqueue(client, seq, frame, front=True)

    def done(self, client: Hashable) -> None:
        """One admitted frame of ``client`` was answered (a result or an error)."""
        n = self._admitted.get(client, 0)
        if n <= 1:
            self._admitted.pop(client, None)
        else:
            self._admitted[client] = n - 1
        self.total = max(0, self.total - 1) if n else self.total

    def drain(self) -> Iterator[tuple[Hashable, int]]:
        """Every waiting frame, taken out (shutdown): the caller answers each."""
        while (item := self.next()) is not None:
            client, seq, _ = item
            self.done(client)
            yield client, seq

    def outstanding(self, client: Hashable) -> int:
        return self._admitted.get(client, 0)

    @property
    def clients(self) -> int:
        """Clients with frames admitted and not yet answered."""
        return len(self._admitted)

    # -- books -------------------------------------------------------------------------------------
    def _enqueue(self, client: Hashable, seq: int, frame: Any, *, front: bool) -> None:
        q = self._waiting.get(client)
        if q is None:
            q = self._waiting[client] = deque()
        if not q:
            (self._turns.appendleft if front else self._turns.append)(client)
        elif front and self._turns and self._turns[0] != client:
            self._turns.remove(client)
            self._turns.appendleft(client)
        (q.appendleft if front else q.append)((seq, frame))
        self.queued += 1

    def _left_queue(self, client: Hashable) -> None:
        self.queued -= 1
        q = self._waiting[client]
        if not q:
            del self._waiting[client]                    # a client that went quiet leaves no books
            if client in self._turns:
                self._turns.remove(client)
