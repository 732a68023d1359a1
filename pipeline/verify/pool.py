"""Worker processes that run answer checks with a hard per-item wall-clock limit, and cannot hang.

Processes. One template process (a fresh `python -c` that imports math-verify and warms its parser up once,
about 2 s) forks every worker on request: a fork of a warm, single-threaded process takes milliseconds and
carries nothing of the caller (no threads, no torch, no main module), so a worker killed at its time limit
is replaced at once. Workers die with the template (parent-death signal); the template exits when this
process closes its control socket or dies.

Scheduling: one call at a time per pool, a single-threaded loop in the caller's thread. It is small enough
to check by reading, and hang-free by construction:
- every item of a call is in exactly one place: the call's queue, one batch in flight on one worker, or done;
- a worker answers each batch with exactly one message, in order, so when every item is done no batch is in
  flight and nothing carries over to the next call (no generations, no stale messages);
- every wait has a bound (`poll_s`), and each turn looks at every busy worker: the item it is on (a shared
  [seq, item, start] array written by the worker, read as a seqlock) against that item's remaining time;
  a worker past it is SIGKILLed, its item gets "timeout", the rest of its batches go back to the queue;
- an item's `timeout_s` is its wall-clock budget over all its attempts: an item whose worker died under it
  (killed from outside, out of memory) is retried with what is left, at most MAX_ATTEMPTS times, then
  reported as "parse error" (it kills workers);
- deaths that settle no item (a worker killed between items, or before it starts) are counted, and a call
  that sees MAX_FUTILE_DEATHS of them in a row raises instead of looping.
So every call returns, and each item costs at most `timeout_s` of worker time plus a fork.

Throughput: items go out grouped by gold answer (a stable sort keeps input order within a gold) in batches
of about BATCH_S of work, each worker through its own contiguous stretch of the queue (it parses a gold once
and math-verify's caches hit as in a serial loop), with one more batch queued behind a short one so that a
worker never waits for this process to be scheduled. bench/bench_verify.py measures it.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from multiprocessing.connection import Connection, wait
from typing import Iterable, Sequence

from .check import (DEFAULT_TIMEOUT_S, REASON_PARSE_ERROR, REASON_TIMEOUT, VerifyResult, as_text, check, soft_limit,
                    warm_up)

DEFAULT_MEMORY_LIMIT_MB = 4096  # address-space cap of one worker process (None: no cap)
_IO_TIMEOUT_S = 10  # a send to or read from a worker that blocks this long fails (the worker is then killed)
_STATE = 3  # doubles in a worker's shared state: seq (odd while being written), item index (-1: none), start


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """The default pool size: the cores this process may use, shared with the other ranks of a distributed run on
    this machine (LOCAL_WORLD_SIZE, set by torchrun and accelerate launch): 8 ranks on a 96-core node start 12
    workers each, not 96. A launcher that pinned each rank to its own cores already shared them out."""
    cores = _cpu_count()
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        ranks = 1
    if ranks > 1 and cores >= (os.cpu_count() or cores):  # not pinned: every rank sees the whole machine
        cores //= ranks
    return max(1, cores)


# ------------------------------------------------------------------------------------- worker processes

def _recv_fds(sock: socket.socket, maxfds: int, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message and the file descriptors sent with it (socket.recv_fds ignores `flags` on Python 3.11)."""
    import array

    msg, ancdata, _, _ = sock.recvmsg(64, socket.CMSG_LEN(maxfds * 4), flags)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _set_parent_death_signal(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent goes, so that no orphan keeps computing a hung item."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent went before the signal was armed
        os._exit(1)


def _template_main() -> None:
    """`python -c "...; _template_main()" CTRL_FD WARM PARENT_PID`: warm up, then fork a worker per request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    ctrl_fd, warm, parent_pid = (int(a) for a in sys.argv[1:4])
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.settimeout(1.0)  # look up every second whether the pool's process is still there
    if warm:
        warm_up()
    else:
        from .answers import math_verify

        math_verify()
    try:
        ctrl.send(b"ready")
    except OSError:  # the pool's process finished (or closed the pool) while this one warmed up: nothing to do
        return
    me = os.getpid()
    while True:
        try:
            msg, fds = _recv_fds(ctrl, 2)
        except TimeoutError:
            if os.getppid() != parent_pid:
                return
            continue
        except OSError:
            return
        if not msg or len(fds) != 2:  # the pool closed its end (or went)
            return
        memory_mb = int(msg.decode().split()[1])
        pid = os.fork()
        if pid == 0:  # the worker
            ctrl.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _worker_main(fds[0], fds[1], memory_mb, me)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(pid)  # race-free kill for the pool (fails if it already exited)
        try:
            socket.send_fds(ctrl, [f"pid {pid}".encode()], [pidfd] if pidfd >= 0 else [])
        except OSError:
            return
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def _worker_main(sock_fd: int, state_fd: int, memory_mb: int, template_pid: int) -> None:
    _set_parent_death_signal(template_pid)
    if memory_mb > 0:
        with contextlib.suppress(Exception):
            import resource

            limit = memory_mb * 1024 * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    mm = mmap.mmap(state_fd, _STATE * 8)
    os.close(state_fd)
    state = memoryview(mm).cast("d")
    conn = Connection(sock_fd)
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "batch":
            return
        _, batch_id, items = msg
        out = []
        for idx, gold, completion, soft_s in items:
            t0 = time.monotonic()
            _publish(state, idx, t0)
            correct, pred, reason = check(gold, completion, soft_s)
            out.append((idx, correct, pred, reason, time.monotonic() - t0))
        _publish(state, -1, 0.0)
        conn.send(("done", batch_id, out))


def _publish(state, idx: int, start: float) -> None:
    state[0] += 1  # odd: being written
    state[1] = idx
    state[2] = start
    state[0] += 1


class _Worker:
    __slots__ = ("conn", "mm", "state", "pid", "pidfd", "ready", "batches", "requested_at", "seen",
                 "seen_at", "item_s", "segment", "dead")

    def __init__(self, conn: Connection, mm: mmap.mmap):
        self.conn, self.mm = conn, mm
        self.state = memoryview(mm).cast("d")
        self.pid: int | None = None
        self.pidfd = -1
        self.ready = False
        self.batches: deque[tuple[int, list[int]]] = deque()  # (batch id, item indices) in flight, in order
        self.requested_at = time.monotonic()
        self.seen, self.seen_at = (-1, 0.0), self.requested_at  # the last state seen to change, and when
        self.item_s = 0.001  # moving average of seconds per item (sizes its batches)
        self.segment: deque | None = None  # its stretch of the call's queue
        self.dead = False

    def current(self) -> tuple[int, float] | None:
        """(item index, start) of the item the worker is on, -1 for none; None while it is being written."""
        seq = self.state[0]
        idx, start = self.state[1], self.state[2]
        if seq != self.state[0] or int(seq) % 2:
            return None
        return int(idx), start

    def kill(self) -> None:
        with contextlib.suppress(OSError, ProcessLookupError, AttributeError):
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.pid:
                os.kill(self.pid, signal.SIGKILL)

    def release(self) -> None:
        self.dead = True
        for close in (self.conn.close, self.state.release, self.mm.close):
            with contextlib.suppress(Exception):
                close()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1


class _Template:
    """The process that forks the workers, and the workers it still owes us (in request order)."""

    def __init__(self, warm: bool):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = f"from {__package__}.pool import _template_main; _template_main()"
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), str(int(warm)),
                                          str(os.getpid())],
                                         pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self.ctrl = ours
        self.ready = False
        self.started_at = time.monotonic()
        self.pending: deque[_Worker] = deque()

    def fileno(self) -> int:
        return self.ctrl.fileno()

    def request(self, memory_limit_mb: int | None) -> _Worker:
        ours, theirs = socket.socketpair()
        for opt in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):  # a worker stopped mid-message cannot block us
            ours.setsockopt(socket.SOL_SOCKET, opt, struct.pack("ll", _IO_TIMEOUT_S, 0))
        state_fd = os.memfd_create("verify-worker-state")
        try:
            os.ftruncate(state_fd, _STATE * 8)
            mm = mmap.mmap(state_fd, _STATE * 8)
            mm[:] = memoryview(bytes(8 * _STATE))
            socket.send_fds(self.ctrl, [f"fork {int(memory_limit_mb or 0)}".encode()], [theirs.fileno(), state_fd])
        finally:
            theirs.close()
            os.close(state_fd)
        w = _Worker(Connection(ours.detach()), mm)
        w.state[1] = -1.0
        self.pending.append(w)
        return w

    def read(self) -> bool:
        """Handle the template's messages; False when it is gone."""
        while True:
            try:
                msg, fds = _recv_fds(self.ctrl, 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not msg:
                return False
            if msg == b"ready":
                self.ready = True
            elif msg.startswith(b"pid ") and self.pending:
                w = self.pending.popleft()
                w.pid = int(msg.split()[1])
                w.pidfd = fds[0] if fds else -1
            else:
                for fd in fds:
                    os.close(fd)

    def close(self, grace_s: float = 2.0) -> None:
        with contextlib.suppress(OSError):
            self.ctrl.close()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(5)


# ----------------------------------------------------------------------------------------------- a call

class _Call:
    """The state of one verify_many call: its queue, each item's remaining budget, the results."""

    def __init__(self, golds: list[str], completions: list[str], timeout_s: float, parts: int, progress: bool):
        self.golds, self.completions, self.timeout_s = golds, completions, timeout_s
        n = len(golds)
        self.results: list[VerifyResult | None] = [None] * n
        self.spent = [0.0] * n  # wall time an item has used in attempts that did not finish
        self.attempts = [0] * n
        self.done = 0
        order = sorted(range(n), key=golds.__getitem__)
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        self.segments = [deque(order[bounds[i]:bounds[i + 1]]) for i in range(parts)]
        self.retry: deque[int] = deque()  # items back from a dead worker: sent first, to whoever is free
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc="verify", unit="ans")

    def pending(self) -> int:
        return len(self.retry) + sum(map(len, self.segments))

    def take(self, w: _Worker, k: int, workers: list[_Worker]) -> list[int]:
        if self.retry:
            return [self.retry.popleft() for _ in range(min(k, len(self.retry)))]
        if not w.segment:
            w.segment = self._adopt(workers)
        return [w.segment.popleft() for _ in range(min(k, len(w.segment)))]

    def _adopt(self, workers: list[_Worker]) -> deque:
        """A stretch nobody works on, else the back half of the largest one left."""
        self.segments = [s for s in self.segments if s]
        owned = {id(x.segment) for x in workers if x.segment}
        for s in self.segments:
            if id(s) not in owned:
                return s
        largest = max(self.segments, key=len)
        stolen = deque(largest.pop() for _ in range((len(largest) + 1) // 2))
        stolen.reverse()
        self.segments.append(stolen)
        return stolen

    def left(self, idx: int) -> float:
        return self.timeout_s - self.spent[idx]

    def finish(self, idx: int, result: VerifyResult) -> None:
        if self.results[idx] is None:
            self.results[idx] = result
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- the pool

class VerifyPool:
    """Worker processes that run answer checks with a hard per-item wall-clock limit (see the module doc).

        with VerifyPool() as pool:
            results = pool.verify_many(golds, completions, timeout_s=5)

    One call runs at a time per pool (calls from other threads wait); usable from any thread and any script:
    workers never import the caller's main module, so no `if __name__ == "__main__"` guard is needed.
    """

    BATCH_S = 0.03  # seconds of work per batch
    MAX_BATCH = 64
    PREFETCH_BYTES = 64 * 1024  # a batch queued behind a running one is at most this big
    MAX_ATTEMPTS = 3
    MAX_FUTILE_DEATHS = 20
    START_TIMEOUT_S = 120.0  # the template's import and warm-up, on a loaded machine
    FORK_TIMEOUT_S = 30.0  # a requested worker that has not said ready by then is given up

    def __init__(self, workers: int | None = None, *, memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
                 soft_timeouts: bool = True, warm: bool = True):
        """workers: processes (default: default_workers(), the cores shared among the local ranks).
        memory_limit_mb: address-space cap of each worker (None: none). soft_timeouts: let each worker stop Python-level work itself (SIGALRM) a little before the
        limit; off, only this process's SIGKILL enforces timeout_s (tests use this). warm: the template runs
        `warm_up()` before forking (about 1 s more start-up; its workers then check ~20% faster at first)."""
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        self.size = workers or default_workers()
        self.memory_limit_mb = memory_limit_mb
        self.soft_timeouts = soft_timeouts
        self.warm = warm
        self.stats = Counter()  # started (workers forked), killed (over time), crashed, templates
        self._workers: list[_Worker] = []
        self._template: _Template | None = None
        self._template_failures = 0
        self._futile = 0  # deaths in a row that settled no item (see _died)
        self._batch_ids = 0
        self._lock = threading.RLock()
        self._closed = False
        self._pid = os.getpid()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> "VerifyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, wait: bool = True) -> "VerifyPool":
        """Start the template process now (it starts on the first call otherwise); with wait, until every
        worker is ready. wait=False returns at once: the ~2 s start-up then overlaps the caller's own."""
        with self._lock:
            self._check_open()
            self._refill()
            deadline = time.monotonic() + self.START_TIMEOUT_S + self.FORK_TIMEOUT_S
            while wait and not (len(self._workers) == self.size and all(w.ready for w in self._workers)):
                if time.monotonic() > deadline:
                    raise RuntimeError("verification workers did not start")
                self._turn(None, 0.05)
                self._refill()
        return self

    def close(self) -> None:
        """Stop the workers and the template."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:  # a forked copy: the processes are not ours
                return
            for w in self._workers:
                w.kill()
                w.release()
            self._workers = []
            if self._template is not None:
                self._template.close()
                self._template = None

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VerifyPool is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("VerifyPool was created in another process (forked); make a new one")

    # -- calls --------------------------------------------------------------------------------------------
    def verify_many(self, golds: Sequence[str], completions: Sequence[str], *,
                    timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = False) -> list[VerifyResult]:
        golds = [as_text(g) for g in golds]
        completions = [as_text(c) for c in completions]
        if len(golds) != len(completions):
            raise ValueError(f"{len(golds)} golds but {len(completions)} completions")
        if not timeout_s or timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if not golds:
            return []
        with self._lock:
            self._check_open()
            call = _Call(golds, completions, float(timeout_s), self.size, progress)
            try:
                self._run(call)
            except BaseException:
                # Interrupted (Ctrl-C) or failed: busy workers hold this call's work; end them (the next
                # call forks new ones).
                for w in list(self._workers):
                    if w.batches:
                        self._drop(w)
                raise
            finally:
                call.close()
            return call.results

    def verify(self, gold: str, completion: str, **kwargs) -> VerifyResult:
        return self.verify_many([gold], [completion], **kwargs)[0]

    def _run(self, call: _Call) -> None:
        assert not any(w.batches for w in self._workers), "a batch outlived its call"
        for w in self._workers:
            w.segment = None
        self._futile = 0
        poll = min(0.05, max(0.002, call.timeout_s / 50))
        while call.done < len(call.results):
            self._refill()
            self._dispatch(call)
            if not call.pending() and not any(w.batches for w in self._workers) and call.done < len(call.results):
                # nothing queued, nothing out, yet not every item answered: a bookkeeping bug. Say so rather
                # than wait for results that cannot come (the hang this pool exists to rule out).
                missing = [i for i, r in enumerate(call.results) if r is None]
                raise RuntimeError(f"verification lost {len(missing)} items (first: {missing[:5]}); this is a bug")
            self._turn(call, poll)

    def _turn(self, call: _Call | None, poll: float) -> None:
        """Wait (at most poll seconds) for messages, handle them, then enforce every time limit."""
        sources = [w.conn for w in self._workers] + ([self._template] if self._template else [])
        for src in wait(sources, timeout=poll):
            if src is self._template:
                if not self._template.read():
                    self._lose_template()
                continue
            w = next((x for x in self._workers if x.conn is src), None)
            if w is not None and not self._read(w, call):
                self._died(w, call, overtime=False)
        now = time.monotonic()
        for w in list(self._workers):
            if w.batches and call is not None:
                self._enforce(w, call, now)
            elif not w.ready and now - w.requested_at > self.FORK_TIMEOUT_S:
                self._died(w, call, overtime=False)
        t = self._template
        if t is not None and not t.ready and now - t.started_at > self.START_TIMEOUT_S:
            self._lose_template()

    def _read(self, w: _Worker, call: _Call | None) -> bool:
        """Every message waiting from w; False when it is gone (EOF, reset, or a message cut by its death)."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.ready = True
                elif msg[0] == "done":
                    batch_id, idxs = w.batches.popleft()
                    assert msg[1] == batch_id, "worker answered out of order"
                    results = msg[2]
                    w.item_s = 0.5 * w.item_s + 0.5 * sum(r[4] for r in results) / max(1, len(results))
                    w.seen_at = time.monotonic()
                    for idx, correct, pred, reason, elapsed in results:
                        call.finish(idx, VerifyResult(correct, pred, reason, call.spent[idx] + elapsed))
                    self._futile = 0
            return True
        except (EOFError, OSError, ValueError, TypeError):
            return False

    def _enforce(self, w: _Worker, call: _Call, now: float) -> None:
        cur = w.current()
        if cur is None:
            return  # being written this instant: look again next turn
        idx, start = cur
        if cur != w.seen:
            w.seen, w.seen_at = cur, now
        if idx >= 0:
            if now - start > call.left(idx):
                self._died(w, call, overtime=True)
        elif now - w.seen_at > call.timeout_s + 2.0:  # busy, yet on no item for that long: stopped or starved
            self._died(w, call, overtime=False)

    def _died(self, w: _Worker, call: _Call | None, overtime: bool) -> None:
        """w ran past an item's time (overtime) or is gone: settle its batches, forget it."""
        w.kill()
        if call is not None:
            self._read(w, call)  # results it sent before it went
        cur = int(w.state[1]), w.state[2]  # a dead worker's last word (even if cut mid-write)
        settled = False
        if call is not None:
            now = time.monotonic()
            back: list[int] = []
            for _, idxs in w.batches:
                for idx in idxs:
                    if call.results[idx] is not None:
                        continue
                    if idx == cur[0] and cur[1] > 0:
                        call.spent[idx] += now - cur[1]
                        call.attempts[idx] += 1
                        settled = True
                        if overtime or call.left(idx) <= 0.01:
                            call.finish(idx, VerifyResult(False, None, REASON_TIMEOUT, call.spent[idx]))
                            continue
                        if call.attempts[idx] >= self.MAX_ATTEMPTS:
                            call.finish(idx, VerifyResult(False, None, REASON_PARSE_ERROR, call.spent[idx]))
                            continue
                    back.append(idx)
            call.retry.extendleft(reversed(back))
        w.batches.clear()
        self.stats["killed" if overtime else "crashed"] += 1
        self._forget(w)
        if call is not None and not settled:
            self._futile += 1
            if self._futile > self.MAX_FUTILE_DEATHS:
                raise RuntimeError(f"verification workers died {self._futile} times in a row without finishing an item")

    def _drop(self, w: _Worker) -> None:
        w.kill()
        w.batches.clear()
        self._forget(w)

    def _forget(self, w: _Worker) -> None:
        if self._template is not None and w in self._template.pending:
            self._template.pending.remove(w)
        if w in self._workers:
            self._workers.remove(w)
        w.release()

    def _lose_template(self) -> None:
        t, self._template = self._template, None
        if t is None:
            return
        for w in list(t.pending):  # requested but never forked
            self._forget(w)
        self._template_failures += 0 if t.ready else 1
        t.close(grace_s=0)
        if self._template_failures > 3:
            raise RuntimeError(f"the verification process keeps dying before it is ready (exit code {t.proc.returncode})")

    def _refill(self) -> None:
        if self._template is None:
            self._template = _Template(self.warm)
            self.stats["templates"] += 1
        if not self._template.ready:
            return
        while len(self._workers) < self.size:
            try:
                w = self._template.request(self.memory_limit_mb)
            except OSError:
                self._lose_template()
                return
            self._workers.append(w)
            self.stats["started"] += 1

    def _dispatch(self, call: _Call) -> None:
        """Keep every ready worker busy: a batch running and, while the queue is long, a small one queued
        behind it in the worker's socket (never near the end, so no worker sits on work another could do).
        A queued batch is at most PREFETCH_BYTES, far below the socket's buffer, so sending never blocks."""
        for w in list(self._workers):
            while call.pending() and w.ready and w.pid and len(w.batches) < 2 and not w.dead:
                if w.batches and call.pending() < self.size * self.MAX_BATCH:
                    break
                by_time = int(self.BATCH_S / max(w.item_s, 1e-5))
                k = max(1, min(self.MAX_BATCH, by_time, math.ceil(call.pending() / (4 * self.size))))
                idxs = call.take(w, k, self._workers)
                payload = [(i, call.golds[i], call.completions[i],
                            soft_limit(call.left(i)) if self.soft_timeouts else None) for i in idxs]
                if w.batches and sum(len(g) + len(c) for _, g, c, _ in payload) > self.PREFETCH_BYTES:
                    call.retry.extendleft(reversed(idxs))
                    break
                self._batch_ids += 1
                try:
                    w.conn.send(("batch", self._batch_ids, payload))
                except (OSError, ValueError):
                    call.retry.extendleft(reversed(idxs))
                    self._died(w, call, overtime=False)
                    break
                if not w.batches:
                    w.seen_at = time.monotonic()
                w.batches.append((self._batch_ids, idxs))


# ------------------------------------------------------------------------ the module-level API (a shared pool)

_default: VerifyPool | None = None
_default_lock = threading.Lock()


def default_pool() -> VerifyPool:
    """The shared pool behind verify_answer / verify_many (default_workers() processes), created on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._pid != os.getpid():
            _default = VerifyPool()
        return _default


def start_default_pool() -> None:
    """Start the shared pool in the background (a stage calls this first, so the start-up overlaps its
    loading)."""
    default_pool().start(wait=False)


def shutdown_default_pool() -> None:
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None and pool._pid == os.getpid():
        pool.close()


atexit.register(shutdown_default_pool)


def verify_many(golds: Iterable[str], completions: Iterable[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                workers: int | None = None, progress: bool = False) -> list[VerifyResult]:
    """Check every (gold, completion) pair; results in input order.

    Runs in worker processes (`workers`, default the cores shared among the local ranks: the shared default pool; another size gets a
    pool of its own for the call), each pair limited to `timeout_s` seconds of wall clock. Safe from any thread.
    """
    golds, completions = list(golds), list(completions)
    if workers is None or workers == default_workers():
        return default_pool().verify_many(golds, completions, timeout_s=timeout_s, progress=progress)
    with VerifyPool(workers) as pool:
        return pool.verify_many(golds, completions, timeout_s=timeout_s, progress=progress)


def verify_answer(gold: str, completion: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyResult:
    """Is the completion's final answer equal to gold? `verify_many([gold], [completion])[0]`."""
    return verify_many([gold], [completion], timeout_s=timeout_s)[0]
