"""pebble's ProcessPool under the stress of tests/test_verify.py::test_stress_no_call_ever_hangs (needs `pip install pebble`):

    .venv/bin/python bench/stress_pebble.py [SECONDS]

Batches with per-task timeouts; a timed-out batch re-run item by item (as the verification issue proposed),
workers killed from outside at random, CPU burners beside it. Prints when the pool breaks, if it does."""
import os, random, signal, subprocess, sys, threading, time, faulthandler
from concurrent.futures import TimeoutError as FutureTimeout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pebble import ProcessPool
from pebble.common import ProcessExpired
from pipeline.verify.check import check, warm_up, soft_limit

TOWER = "\\boxed{10^{10^{10^{10}}}}"

def batch(items):
    return [check(g, c, s) for g, c, s in items]

def verify_many(pool, golds, comps, timeout_s, soft=False):
    s = soft_limit(timeout_s) if soft else None
    items = [(g, c, s) for g, c in zip(golds, comps)]
    chunks = [list(range(i, min(i + 32, len(items)))) for i in range(0, len(items), 32)]
    out = [None] * len(items)
    futs = [pool.schedule(batch, args=([items[i] for i in ch],), timeout=timeout_s) for ch in chunks]
    for ch, f in zip(chunks, futs):
        try:
            for i, r in zip(ch, f.result()):
                out[i] = r
        except (FutureTimeout, ProcessExpired):
            for i in ch:
                g = pool.schedule(batch, args=([items[i]],), timeout=timeout_s)
                try:
                    out[i] = g.result()[0]
                except FutureTimeout:
                    out[i] = (False, None, "timeout")
                except ProcessExpired:
                    out[i] = (False, None, "parse error")
    return out

def main():
    warm_up()
    timeout_s, run_s = 1.5, float(sys.argv[1]) if len(sys.argv) > 1 else 60
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    pool = ProcessPool(max_workers=2)
    stop = threading.Event()
    def pids():
        return [w.pid for w in list(pool._pool_manager.worker_manager.workers.values())]
    def killer():
        r = random.Random(7)
        while not stop.wait(r.uniform(0.2, 1.0)):
            p = pids()
            if p:
                try: os.kill(r.choice(p), signal.SIGKILL)
                except ProcessLookupError: pass
    threading.Thread(target=killer, daemon=True).start()
    rng = random.Random(12); worst = 0; calls = 0; slow = 0; t_end = time.monotonic() + run_s
    try:
        while time.monotonic() < t_end:
            faulthandler.dump_traceback_later(120, exit=True)
            if calls % 25 == 24:
                n = rng.randint(2, 200); vals = [rng.randint(0, 99) for _ in range(n)]
                comps = [f"so \\boxed{{{v + (i % 4 == 0)}}}" for i, v in enumerate(vals)]
                if rng.random() < 0.3: comps[rng.randrange(n)] = TOWER
                golds = [str(v) for v in vals]
            else:
                kind = rng.random(); v = f"y_{{{calls}}}"
                golds, comps = ([f"\\tan^2({v})+1"], [f"\\boxed{{\\sec^2({v})}}"]) if kind < 0.03 else \
                    (["5"], [TOWER]) if kind < 0.04 else ([str(calls)], [f"\\boxed{{{calls}}}"])
            t = time.monotonic()
            try:
                verify_many(pool, golds, comps, timeout_s)
            except Exception as e:
                print(f"pebble: call {calls} failed after {time.monotonic() - t_end + run_s:.1f} s: {type(e).__name__}: {e}")
                return
            dt = time.monotonic() - t
            faulthandler.cancel_dump_traceback_later()
            worst = max(worst, dt); calls += 1; slow += dt > timeout_s + 2
    finally:
        stop.set()
        for b in burners: b.kill()
        faulthandler.cancel_dump_traceback_later()
    print(f"pebble: {calls} calls in {run_s:.0f} s, slowest {worst:.2f} s, calls over timeout+2 s: {slow}")
    pool.stop(); pool.join(10)

if __name__ == "__main__":
    main()
