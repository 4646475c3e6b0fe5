"""One worker: receive a batch, run the bound pipeline over it, send the replies; repeat.

The same loop serves every receive mode (the receiver and sender of ``_transport`` hide the
system calls). Per batch: the C fast path first, when there is one, then for each frame left
the source check (our own replies looped back, ``--allow-from``), what the receiver said of it
(not unicast, too long) and the pipeline; then one send for the batch. Counters of frames are
the pipeline's (``Stats``); the worker counts only what never reaches it: sources refused, and
replies the kernel would not send. It runs in a thread or in a forked process, and publishes a
snapshot of its counters and a heartbeat twice a second.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ._loader import RulesError, RulesSource, load_rules
from ._pipeline import ErrorPolicy, FlowTable, Modifier, Pipeline, Stats, rule_counters
from ._sockets import Sockets, own_addresses
from ._transport import (
    NOT_UNICAST,
    BatchSender,
    FastPath,
    FrameSender,
    Receiver,
    open_transport,
)

__all__ = [
    "ADMIT_CACHE",
    "BATCH",
    "ERROR_LOG_INTERVAL",
    "HEARTBEAT",
    "RESUME",
    "RETIRE",
    "Worker",
    "process_main",
]

log = logging.getLogger("geneve.appliance")

#: How often a worker publishes counters and heartbeats.
HEARTBEAT = 0.5
#: How long a worker process of an upgrade's new process waits for the flows it takes over.
UPGRADE_WAIT = 120.0
#: How often a worker ticks its pipeline (idle flows end, the modifier's on_tick runs).
TICK = 1.0
#: Frames per recvmmsg/sendmmsg call when the C batch module is built.
BATCH = 64
#: What Worker.swap holds when a forked worker must read its rules again.
RELOAD = "reload"
#: What a worker paused for an upgrade (Worker.pause; docs/appliance.md) waits for: go on,
#: or retire (the new process took over).
RESUME = "resume"
RETIRE = "retire"
#: Modifier errors logged at most this often per worker (the rest are counted).
ERROR_LOG_INTERVAL = 1.0
#: Sources whose admission is cached at once (the cache is emptied when full).
ADMIT_CACHE = 4096

# What _admit caches for a source: its 4 address bytes when it may be processed, else one of
# these, whose length is not 4: the loop tells the cases apart by len() alone.
_OWN = b"own"
_DENIED = b"denied"


class Worker:
    """The receive-process-send loop of one worker (runs in a thread or a forked process)."""

    def __init__(
        self,
        index: int,
        sockets: Sockets,
        modifier: Modifier,
        *,
        on_error: ErrorPolicy,
        on_too_large: ErrorPolicy = "drop",
        max_inner_length: int,
        publish: Any,
        allow_from: tuple[ipaddress.IPv4Network, ...] = (),
        batch: int = BATCH,
        fast_path: bool = True,
        flows: FlowTable | None = None,
        rules: RulesSource | str | None = None,
    ) -> None:
        self.index = index
        # The MODULE:CALLABLE the modifier came from, read again at a reload in a process.
        self.rules = rules
        # A reload to make between two batches: a new modifier (a thread of the daemon's
        # process), or RELOAD (read ``rules`` again: a forked worker got SIGHUP).
        self.swap: Modifier | str | None = None
        # An upgrade: what hand_over() gave at PAUSE (for the appliance to send on), how to
        # wait for the decision that follows (set by whoever runs the worker), whether the
        # worker retired (its flows live on in another process), and what a worker of the
        # new process takes over before its first batch.
        self.handed: dict[str, Any] | None = None
        self.pause = False  # set to make the worker pause between two batches
        self.on_paused: Callable[[Worker], None] | None = None
        self.decision: Callable[[float], str | None] = self._thread_decision
        self._decided: str | None = None
        self._decision_ready = threading.Event()
        self.retired = False
        self.inherit: dict[str, Any] | None = None
        self.taken_over = 0
        # While it takes the flows over it is not stale (nothing to read yet); then "taken".
        self.taking_over = False
        self.taken = threading.Event()
        self.on_taken: Callable[[Worker], None] | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.batch = batch
        self.fast_path = fast_path
        self.allow = tuple((int(net.network_address), int(net.netmask)) for net in allow_from)
        self.sockets = sockets
        self.pipeline = Pipeline(
            modifier,
            on_error=on_error,
            on_too_large=on_too_large,
            max_inner_length=max_inner_length,
            port=sockets.port,
            flows=flows,
        )
        self.stats: Stats = self.pipeline.stats
        self.publish = publish
        self.parent = os.getpid()  # made in the daemon; a forked worker watches it
        # What never reaches the pipeline: counted here, each in one place.
        self.send_errors = 0
        self.own_replies = 0
        self.not_allowed = 0
        self.stop = threading.Event()
        self.failed: str | None = None
        self.heartbeat = time.monotonic()
        self.own: frozenset[bytes] = frozenset()
        # The pipeline's clock (see clock()): set again when the worker starts running.
        self.epoch = time.time() - time.monotonic()

    def clock(self) -> float:
        """The pipeline's time: wall-clock seconds (Unix time) that never jump.

        The monotonic clock, shifted once by the wall clock when the worker starts: flow
        times (``first_seen``, ``last_seen``, ``packet.timestamp``) read as dates, and a wall
        clock stepped later (NTP, a VM resumed) moves no timeout.
        """
        return time.monotonic() + self.epoch

    def run(self) -> None:
        inherit = self.inherit
        # The old process's clock, when taking over: flow times go on from where they were.
        self.epoch = (
            float(inherit["epoch"])
            if inherit is not None and "epoch" in inherit
            else time.time() - time.monotonic()
        )
        try:
            interest = self.pipeline.interest if self.fast_path else None
            max_inner = self.pipeline.max_inner_length
            receiver, sender, fast = open_transport(
                self.sockets, self.batch, interest, max_inner, self.pipeline.flows
            )
            # The receiver knows whether a kernel UDP socket checked the outer UDP checksum
            # (raw receive: none did, so a bad one stops in the pipeline).
            self.pipeline.verify_outer_udp = receiver.verify_outer_udp
            if inherit is not None:  # an upgrade: the old process's flows, as they were
                self.taking_over = True
                self._publish()
                try:
                    self.taken_over = self.pipeline.take_over(inherit, self.clock())
                finally:
                    self.inherit = None
                    self.taking_over = False
                self._publish()
                if self.on_taken is not None:
                    self.on_taken(self)
            self.taken.set()
            self.pipeline.start()  # the modifier's on_start(), in the thread or process it runs in
            try:
                self._loop(receiver, sender, fast)
            finally:
                if self.retired:  # handed over: the flows live on in the new process
                    self.pipeline.retire()
                else:  # however else the loop ended: every live flow ends, then on_stop()
                    self.pipeline.stop(self.clock())
        except Exception as err:
            self.failed = f"{type(err).__name__}: {err}"
            log.error("worker %d stopped: %s", self.index, self.failed)
        finally:
            self._publish(final=True)

    def _loop(self, receiver: Receiver, sender: FrameSender, fast: FastPath | None) -> None:
        pipeline = self.pipeline
        handle = pipeline.handle
        stats = self.stats
        slots = receiver.slots
        bufs, lens, sources, out = slots.bufs, slots.lens, slots.sources, slots.out
        receive, address_of = receiver.receive, receiver.address_of
        send = sender.send
        # A batch sender sends each slot's reply with the batch; otherwise each goes at once.
        send_slots = sender.send_slots if isinstance(sender, BatchSender) else None
        admitted: dict[Any, bytes] = {}
        next_beat = self._beat(admitted, receiver, fast)
        monotonic, epoch = time.monotonic, self.epoch
        next_tick = monotonic() + TICK
        last_logged, logged = 0.0, 0
        stop = self.stop
        while not stop.is_set():
            if self.pause:  # an upgrade: hand the flows over, then retire or go on
                if self._pause(receiver, fast):
                    return  # retired: another process reads the sockets now
                continue
            if self.swap is not None:  # between two batches: the reloaded rules take over
                self._reload(fast)
            got = receive()
            if got:
                now = monotonic() + epoch  # the pipeline's clock (self.clock): once a batch
                todo: Any = range(got)
                if fast is not None:
                    done, todo = fast.forward(got, now)
                    if fast.flows is None:
                        if done:
                            pipeline.count_fast_forwarded(done)
                    else:
                        c = fast.counts
                        pipeline.count_fast_path(done, c[0], c[1], c[2], bool(c[3]))
                for i in todo:
                    out[i] = 0
                    src = sources[i]
                    verdict = admitted.get(src)
                    if verdict is None:
                        verdict = self._admit(admitted, src, address_of(src))
                        if fast is not None and len(verdict) == 4:
                            fast.trust(src)
                    if len(verdict) != 4:
                        self._refused(verdict)
                        continue
                    length = lens[i]
                    if length < 0:
                        if length == NOT_UNICAST:
                            pipeline.count_not_unicast()
                        else:
                            pipeline.count_too_long()
                        continue
                    buf = bufs[i]
                    frames = handle(buf, length, now)
                    if frames:
                        reply = frames[0]
                        if send_slots and len(frames) == 1 and reply.obj is buf:
                            out[i] = len(reply)  # in its slot: sent with the batch
                        else:
                            for frame in frames:
                                if send(frame):
                                    self._send_failed(sender.error)
                if send_slots:
                    failed = send_slots(got)
                    if failed:
                        self._send_failed(sender.error, failed)
                if stats.modifier_errors != logged:
                    last_logged, logged = self._log_error(last_logged, logged)
            clock = monotonic()
            if clock >= next_beat:
                next_beat = self._beat(admitted, receiver, fast)
                if clock >= next_tick:  # idle flows end, then the modifier's on_tick(now)
                    for frame in pipeline.tick(clock + epoch):  # held frames let go
                        if send(frame):
                            self._send_failed(sender.error)
                    next_tick = clock + TICK
                    if stats.modifier_errors != logged:
                        last_logged, logged = self._log_error(last_logged, logged)

    def _pause(self, receiver: Receiver, fast: FastPath | None) -> bool:
        """Stop reading, hand the pipeline's flows over (:attr:`handed`, :attr:`on_paused`),
        then wait for the decision: RETIRE (True: the new process reads the sockets from now
        on) or RESUME (False: go on as if nothing happened). A stop meanwhile is a stop."""
        self.pause = False
        while self.decision(0) is not None:
            pass  # a decision left from an upgrade before this one: not this one's
        handed = self.pipeline.hand_over()
        handed["epoch"] = self.epoch
        self.handed = handed
        if self.on_paused is not None:
            self.on_paused(self)
        while not self.stop.is_set():
            decided = self.decision(HEARTBEAT / 2)
            if decided == RETIRE:
                self.retired = True
                return True
            if decided == RESUME:
                self.handed = None
                log.info("worker %d: the upgrade did not happen, going on", self.index)
                return False
            self._beat({}, receiver, fast)  # still alive, for the health endpoint
        return True

    def decide(self, decision: str) -> None:
        """RESUME or RETIRE a worker thread paused for an upgrade."""
        self._decided = decision
        self._decision_ready.set()

    def _thread_decision(self, timeout: float) -> str | None:
        if not self._decision_ready.wait(timeout):
            return None
        self._decision_ready.clear()
        decided, self._decided = self._decided, None
        return decided

    def _reload(self, fast: FastPath | None) -> None:
        """Swap in the new modifier: the old one's ``on_stop()``, the new one's ``on_start()``;
        flows, their state and verdicts stay. A modifier that cannot be read again (in a
        worker process) leaves the old one running, logged and counted."""
        swap, self.swap = self.swap, None
        if swap == RELOAD:
            if self.rules is None:
                return
            try:
                modifier: Modifier = load_rules(self.rules, reload=True)
            except RulesError as err:
                self.reload_failures += 1
                log.error("worker %d: reload failed, the old rules stay: %s", self.index, err)
                return
        else:
            assert callable(swap)
            modifier = swap
        pipeline = self.pipeline
        pipeline._hook("on_stop")
        pipeline.set_modifier(modifier)
        if fast is not None:
            fast.set_interest(pipeline.interest)
        pipeline.start()
        self.reloads += 1

    def _admit(self, cache: dict[Any, bytes], key: object, src: bytes) -> bytes:
        """Decide (on a cache miss) whether Geneve from ``src`` may be processed.

        Returns ``src`` when it may, else _OWN or _DENIED, and caches the answer under ``key``
        (each receiver keys its sources by what it has at hand without allocating).
        """
        if len(cache) >= ADMIT_CACHE:  # spoofed sources must not grow memory
            cache.clear()
        verdict = src
        if src in self.own:
            verdict = _OWN  # a reply of ours that looped back: never process it
        elif self.allow:
            value = int.from_bytes(src, "big")
            if not any(value & mask == net for net, mask in self.allow):
                verdict = _DENIED  # not a GWLB we serve: never bounce its packets anywhere
        cache[key] = verdict
        return verdict

    def _refused(self, verdict: bytes) -> None:
        if verdict is _OWN:
            self.own_replies += 1
        else:
            self.not_allowed += 1

    def _beat(self, cache: dict[Any, bytes], receiver: Receiver, fast: FastPath | None) -> float:
        """Twice a second: publish counters, re-read our own addresses; the next beat's time."""
        self.own, receiver.broadcast = own_addresses()
        cache.clear()
        if fast is not None:
            # Keep only the sources still admitted against the fresh own addresses.
            address_of = receiver.address_of
            fast.keep_trusting(lambda t: len(self._admit(cache, t, address_of(t))) == 4)
        self._publish()
        return time.monotonic() + HEARTBEAT

    def _log_error(self, last_logged: float, logged_count: int) -> tuple[float, int]:
        now = time.monotonic()
        if now - last_logged >= ERROR_LOG_INTERVAL:
            err = self.stats.last_error
            suppressed = self.stats.modifier_errors - logged_count - 1
            log.warning(
                "modifier error (%s policy): %s: %s%s",
                self.pipeline.on_error,
                type(err).__name__,
                err,
                f" ({suppressed} more not logged)" if suppressed > 0 else "",
                # Its traceback, which names the line of the modifier that raised.
                exc_info=(type(err), err, err.__traceback__) if err is not None else None,
            )
            return now, self.stats.modifier_errors
        return last_logged, logged_count

    def _send_failed(self, err: OSError | None, count: int = 1) -> None:
        before = self.send_errors
        self.send_errors += count
        if before == 0 or before // 1000 != self.send_errors // 1000:
            log.warning("send failed (%d so far): %s", self.send_errors, err)

    def _publish(self, final: bool = False) -> None:
        self.heartbeat = time.monotonic()
        if self.publish is not None:
            # A worker process whose daemon died (SIGKILL, the OOM killer) was given to another
            # parent: it must not go on answering GWLB and holding the port.
            if os.getppid() != self.parent and not self.stop.is_set():
                log.error("worker %d: the daemon is gone, stopping", self.index)
                self.stop.set()
            with contextlib.suppress(OSError, ValueError):
                self.publish(self.snapshot(final))

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        return {
            "index": self.index,
            "stats": self.stats.as_dict(),
            "send_errors": self.send_errors,
            "own_replies": self.own_replies,
            "not_allowed": self.not_allowed,
            "reloads": self.reloads,
            "rule_counters": rule_counters(),
            "reload_failures": self.reload_failures,
            "taken_over": self.taken_over,
            "taking_over": self.taking_over,
            "failed": self.failed,
            "final": final,
            "time": time.time(),
        }


def process_main(worker: Worker, conn: multiprocessing.connection.Connection) -> None:
    """Entry of a forked worker process: stop on SIGTERM/SIGINT, report through ``conn``."""

    def on_signal(signum: int, frame: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    def on_reload(signum: int, frame: object) -> None:
        worker.swap = RELOAD  # read the rules again between two batches

    # The parent reloads on SIGHUP after checking the rules, then sends it to each worker.
    signal.signal(signal.SIGHUP, on_reload)

    def on_pause(signum: int, frame: object) -> None:
        worker.pause = True  # an upgrade: hand the flows over between two batches

    signal.signal(signal.SIGUSR1, on_pause)
    # SIGUSR2 is the daemon's (an upgrade); a worker that gets it too (systemctl kill to the
    # whole group) must not die of it.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    def paused(w: Worker) -> None:
        conn.send({"index": w.index, "handover": w.handed})

    def decision(timeout: float) -> str | None:
        if not conn.poll(timeout):
            return None
        message: str = conn.recv()
        return message

    worker.publish = conn.send
    worker.on_paused = paused
    worker.decision = decision
    if worker.inherit is not None and worker.inherit.get("wait"):
        # An upgrade's new process: the flows come through conn once the old one let go.
        deadline = time.monotonic() + UPGRADE_WAIT
        while not conn.poll(HEARTBEAT / 2):
            if worker.stop.is_set() or time.monotonic() > deadline:
                log.error("worker %d: no flows came from the old process, stopping", worker.index)
                conn.close()
                return
        worker.inherit = conn.recv()

        def taken(w: Worker) -> None:
            conn.send({"index": w.index, "taken": w.taken_over})

        worker.on_taken = taken
    worker.run()
    conn.close()
