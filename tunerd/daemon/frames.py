"""The frames path of the daemon: receive, validate, admit, feed the pipeline, reply in order.

A mixin of ``Daemon`` (tunerd.daemon.server), as the sockets and control ones are: these methods
read and set the daemon's own books (``_requests``, ``_order``, ``_held``, ``_admission``,
``_seen``, the counters) and its ``pipeline``, ``tuner`` and ``live``.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import zmq

from ..errors import TunerdError
from ..tuning import states
from ..wire import protocol
from .sockets import readable

log = logging.getLogger("tunerd")

REPLY_STALL_S = 3.0     # a client whose replies cannot leave (SNDHWM reached) for this long is not reading
MAX_HELD_REPLIES = 4096  # ... nor is one with this many requests waiting for their replies to leave
RETRY_DEFAULT_MS, RETRY_MAX_MS = 10, 1000   # busy replies' retry_after_ms: no rate known yet; at most
# NOTE: measured (tools/bench_fairness.py --rounds 3, squeezenet 224, 1+1 pinned, a 64-frame flooder and a
# one-at-a-time client, a quiet machine): with 3 frames inside (one a worker, one more) the pipeline
# served 77.3-88.2 fps and the polite client's p50 was 2.86-3.15x its latency alone; with 4, 77.3-81.5
# fps and 3.70-4.17x; with max_in_flight's 8, 75.8 fps and 5.98x
FILL_EXTRA = 1
ACTIVE_CLIENT_S = 1.0   # a client that sent a frame this recently counts as one to be fair to


@dataclass
class Request:
    """A frame request until its reply has left: who sent it, under which id, when."""
    identity: bytes
    client_id: int | None
    t_recv: float
    reply: list | None = None


class FramesMixin:
    """The Daemon's frames methods (see the module docstring)."""
    def _read_frames(self, budget: int = 256) -> None:
        expected, limits = self._expected_shape or list(self.model.input_shape), self._limits
        now = self.clock()
        for _ in range(budget):
            if not readable(self.frames):
                return
            try:
                msg = self.frames.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = msg[0].bytes
            self._seen[identity] = now
            seq = self._new_request(identity, None)
            try:
                cid, array = protocol.decode_request(msg[1:], expected_shape=expected, limits=limits)
            except protocol.ProtocolError as err:
                self._requests[seq].client_id = err.id
                self._reply_error(seq, err.code, err.message)
                continue
            self._requests[seq].client_id = cid
            if not self._admitting:
                self._reply_error(seq, protocol.SHUTTING_DOWN, "tunerd is shutting down")
                continue
            decision = self._admission.admit(identity, seq, array)
            for _, victim in decision.preempted:
                self._reply_busy(victim, "admission queue full and this client over its share: a frame of a "
                                         "client within its share took its place")
            if not decision.admitted:
                self._reply_busy(seq, decision.reason)
            elif self.tuner.state == states.IDLE and not self.tuner.pinned:
                self.live.step()       # first frame: the search starts

    def _new_request(self, identity: bytes, client_id) -> int:
        self._seq += 1
        self._requests[self._seq] = Request(identity, client_id, self.clock())
        self._order.setdefault(identity, deque()).append(self._seq)
        return self._seq

    def _feed(self) -> None:
        """Frames into the pipeline, round-robin between clients, while it has room for them."""
        limit = self._fill_limit()
        while self._admission.queued and self.pipeline.pending < limit:
            client, seq, array = self._admission.next()
            try:
                accepted = self.pipeline.submit(seq, array)
            except TunerdError as err:
                self._admission.done(client)
                self._reply_error(seq, protocol.INTERNAL, str(err))
                continue
            if not accepted:
                self._admission.put_back(client, seq, array)
                return

    def _fill_limit(self) -> int:
        """Frames the pipeline may hold. With one client, max_in_flight; with several, what keeps it
        full (one a stage worker, FILL_EXTRA more): a frame taken in its turn waits behind the frames
        already inside, and each one more there is one more period of waiting for every client."""
        # NOTE: clients seen lately, not only those with frames in: a client sending one frame at a
        # time has none in between, and the pipeline would fill up with the other's frames meanwhile
        if len(self._seen) <= 1:
            return self.cfg.max_in_flight
        config = self.pipeline.config
        if self._fill is None or self._fill[0] is not config:
            workers = sum(st.replicas for st in config.stages)
            self._fill = (config, max(1, min(self.cfg.max_in_flight, workers + FILL_EXTRA)))
        return self._fill[1]

    def _retry_after_ms(self) -> int:
        """How long until the daemon has room again: one frame's time at the recent answer rate."""
        times = self._answered_at
        if len(times) < 2 or times[-1] <= times[0]:
            return RETRY_DEFAULT_MS
        return max(1, min(RETRY_MAX_MS, round(1000 * (times[-1] - times[0]) / (len(times) - 1))))

    def _reply_busy(self, seq: int, reason: str) -> None:
        self._reply_error(seq, protocol.BUSY, reason, retry_after_ms=self._retry_after_ms())

    def _answer_outcome(self, o) -> None:
        req = self._requests.get(o.frame_id)
        if req is None:
            return
        self._admission.done(req.identity)
        self._answered_at.append(self.clock())
        if o.ok:
            self.frames_served += 1
            latency_s = self.clock() - req.t_recv
            self.latency.observe(latency_s)
            latency_us = int(1e6 * latency_s)
            req.reply = protocol.encode_reply_ok(req.client_id, o.output, o.epoch, latency_us)
            self._flush(req.identity)
        else:
            self.frames_failed += 1
            self._reply_error(o.frame_id, protocol.WORKER_FAILED, o.error or "the frame failed")

    def _reply_error(self, seq: int, code: str, message: str, **extra) -> None:
        req = self._requests[seq]
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        req.reply = protocol.encode_reply_error(req.client_id, code, message, **extra)
        self._flush(req.identity)

    def _flush(self, identity: bytes) -> None:
        """Send this client's replies that are ready, in its send order.

        EAGAIN (its pipe holds SNDHWM replies) keeps the rest for a later tick: a burst of replies
        fills the pipe faster than the I/O thread drains it even when the client reads. A client whose
        replies cannot leave for REPLY_STALL_S, or with MAX_HELD_REPLIES requests waiting, does not
        read: its ready replies are dropped. EHOSTUNREACH: the client is gone, its replies dropped.
        """
        order = self._order.get(identity)
        while order and self._requests[order[0]].reply is not None:
            req = self._requests[order[0]]
            try:
                self.frames.send_multipart([identity, *req.reply], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                now = self.clock()
                since = self._held.setdefault(identity, now)
                if now - since < REPLY_STALL_S and len(order) <= MAX_HELD_REPLIES:
                    return                       # try again on a later tick
                self.replies_dropped += 1
                log.debug("reply to a client dropped: it has not read for %.1f s", now - since)
            except zmq.ZMQError as err:
                self.replies_dropped += 1
                log.debug("reply to a client dropped: %s", err)
            else:
                self._held.pop(identity, None)
            del self._requests[order.popleft()]
        if order is not None and not order:
            del self._order[identity]
            self._held.pop(identity, None)

    def _retry_held(self) -> None:
        for identity in list(self._held):
            self._flush(identity)
