"""Load generator of the ingest bench; runs as its own process (``bench/ingest`` starts it).

    python bench/loadgen.py CONFIG.json RESULT.json

C threads, each with one keep-alive ``http.client`` connection, send the configured request templates
round-robin (thread ``i`` starts at template ``i``), replacing the placeholder id in the URL and body
with a fresh id per request so that no two requests carry the same call. A warm-up period is sent but
not recorded; then requests are measured until ``seconds`` pass or ``max_requests`` measured requests
were started, whichever comes first. Per request: latency (perf_counter, send to last byte read) and
status; anything but 200 (including a transport error, recorded as status 0) is an error.

With ``rate`` (requests/s, used by ``bench/e2e``) the threads send on a fixed schedule instead of as fast
as they can: request n is due at start + n / rate (a thread that falls behind sends at once). With
``sequential_ids`` request n gets the id ``<prefix><n:08d>`` and template n mod the number of templates
(so ids are unique across threads and their last digits spread evenly); with ``record_ids`` the result
lists every request as [id, wall-clock send time, status].

While measuring, a sampler thread records the CPU seconds of the watched process trees (the servers)
and of this process, and the peak RSS of every watched process. Standard library only.
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proctools  # noqa: E402

# gunicorn closes a keep-alive connection idle for 2 s (its default keepalive); at a low fixed rate a thread's
# connection idles longer than that, so it opens a new one rather than write into a closed one.
IDLE_RECONNECT_SECONDS = 1.0


def run(cfg: dict) -> dict:
    host, port, timeout = cfg["host"], cfg["port"], cfg.get("timeout", 10.0)
    placeholder = cfg["placeholder"]
    templates = [(t["method"], t["url"], t["headers"], t["body"].encode() if t["body"] is not None else None)
                 for t in cfg["templates"]]
    placeholder_b = placeholder.encode()
    n_templates = len(templates)
    concurrency, max_requests = cfg["concurrency"], cfg["max_requests"]
    prefix = cfg["id_prefix"]
    rate, sequential, record_ids = cfg.get("rate"), cfg.get("sequential_ids", False), cfg.get("record_ids", False)
    sequence = itertools.count()  # the schedule / id counter shared by every thread
    measured_started = itertools.count()  # next() is atomic under the GIL
    barrier = threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}
    per_thread: list[dict] = [{} for _ in range(concurrency)]
    stop_sampling = threading.Event()

    def worker(tid: int) -> None:
        lat: list[float] = []
        kinds: list[int] = []
        warm, measured = Counter(), Counter()
        errors: list[dict] = []
        sent: list[tuple[str, float, int]] = []
        conn: http.client.HTTPConnection | None = None
        conn_used = 0.0
        seq, i = 0, tid
        barrier.wait()
        warm_end, end = clock["warm_end"], clock["end"]
        last_done = 0.0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if now >= warm_end and next(measured_started) >= max_requests:
                break
            if sequential or rate:
                n = next(sequence)
                if rate:
                    due = clock["start"] + n / rate
                    if due >= end:
                        break
                    if due > now:
                        time.sleep(due - now)
                k = n % n_templates
                uid = f"{prefix}{n:08d}"
            else:
                k = i % n_templates
                i += 1
                uid = f"{prefix}{tid:02d}x{seq:07d}"
                seq += 1
            method, url, headers, body = templates[k]
            url = url.replace(placeholder, uid)
            if body is not None:
                body = body.replace(placeholder_b, uid.encode())
            t0, wall0 = time.perf_counter(), time.time()
            if conn is not None and t0 - conn_used > IDLE_RECONNECT_SECONDS:
                conn.close()  # the server may have closed it meanwhile: writing to it would fail
                conn = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # transport error: counts as an error, reconnect
                status, data = 0, f"{type(exc).__name__}: {exc}".encode()
                if conn is not None:
                    conn.close()
                conn = None
            t1 = conn_used = time.perf_counter()
            if record_ids:
                sent.append((uid, wall0, status))
            if t0 >= warm_end:
                measured[status] += 1
                lat.append((t1 - t0) * 1000.0)
                kinds.append(k)
                last_done = t1
            else:
                warm[status] += 1
            if status != 200 and len(errors) < 5:
                errors.append({"status": status, "template": k, "body": data[:300].decode(errors="replace")})
        if conn is not None:
            conn.close()
        per_thread[tid] = {"lat": lat, "kinds": kinds, "warm": warm, "measured": measured, "errors": errors,
                           "last_done": last_done, "sent": sent}

    watch: dict[str, int] = cfg.get("watch", {})
    samples: dict[str, dict] = {}
    peak_rss: dict[int, int] = {}

    def sample_cpu() -> dict:
        return {"process": time.process_time(), "host": proctools.host_busy_seconds(),
                **{name: proctools.tree_cpu_seconds(pid) for name, pid in watch.items()}}

    def sampler() -> None:
        time.sleep(max(0.0, clock["warm_end"] - time.perf_counter()))
        samples["start"] = sample_cpu()
        while not stop_sampling.wait(0.25):
            for pid in watch.values():
                for p, _ in proctools.tree(pid):
                    rss = proctools.rss_kib(p) or 0
                    if rss > peak_rss.get(p, 0):
                        peak_rss[p] = rss

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    clock.update(start=start, warm_end=start + cfg["warmup"], end=start + cfg["warmup"] + cfg["seconds"])
    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    barrier.wait()
    for t in threads:
        t.join()
    finished = time.perf_counter()
    stop_sampling.set()
    sampler_thread.join()
    samples["end"] = sample_cpu()

    measure_end = max([r["last_done"] for r in per_thread] + [clock["warm_end"]])
    duration = max(1e-9, min(finished, measure_end) - clock["warm_end"])
    warm, measured = Counter(), Counter()
    lat: list[float] = []
    kinds: list[int] = []
    errors: list[dict] = []
    for r in per_thread:
        warm.update(r["warm"])
        measured.update(r["measured"])
        lat.extend(r["lat"])
        kinds.extend(r["kinds"])
        errors.extend(r["errors"])
    cpu = {name: samples["end"][name] - samples.get("start", samples["end"])[name] for name in samples["end"]}
    return {
        "warmup": {"sent": sum(warm.values()), "status": {str(k): v for k, v in warm.items()}},
        "measured": {"sent": sum(measured.values()), "status": {str(k): v for k, v in measured.items()},
                     "seconds": duration},
        "latency_ms": lat, "template": kinds, "errors": errors[:10],
        "cpu_seconds": cpu,  # over the measured window: "process" is this load generator
        "peak_rss_kib": {str(p): v for p, v in peak_rss.items()},
        **({"sent": [s for r in per_thread for s in r["sent"]]} if record_ids else {}),
    }


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    result = run(cfg)
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
