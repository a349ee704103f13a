"""Rule-filter pipeline throughput: curate vs DataTrove on the same real corpus, same rules, same warm-up.

    python benchmarks/bench_filters.py [--docs 20000] [--small 200] [--workers 1,2]
        [--sides curate,datatrove-spacy,datatrove-regex] [--datatrove-python PATH]

Pipeline on both sides: Gopher repetition -> Gopher quality -> C4 quality -> FineWeb quality -> exact dedup.
DataTrove runs its own 4-stage equivalent (filters + writer, exact-dedup signature, find dups, filter) in
its own environment: ``--datatrove-python`` or ``$CURATE_DATATROVE_PYTHON``, default
``/work/peers/datatrove/bin/python`` (built by ``benchmarks/setup_peers.sh``: datatrove 0.10.1, spaCy 3.8),
once with its default English tokenizer (spaCy) and once with a regex tokenizer (its fastest option; see
``_datatrove_filters.py``). A side whose environment is missing is skipped with a line saying so.

Every (side, workers) cell runs the same three times, each a fresh process: a warm-up on the small corpus
(untimed: fills the OS page cache, numba's and spaCy's on-disk caches for both sides alike), the small
corpus (``--small`` documents: start-up, the fixed cost of a run), the full corpus. Reported per run:
wall seconds, CPU seconds (user + sys of the whole process tree, from ``wait4``: workers included),
docs/s (wall), docs per CPU-second (= docs/s per core actually used), the steady state (documents beyond
the small run per extra CPU-second and per extra wall second: start-up taken out), the largest
per-process peak RSS (VmHWM, sampled from /proc) and kept documents; the load average before and after,
since the machine may be shared (CPU seconds are the figure to compare then, wall seconds are not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _corpus import real_documents, write_shards  # noqa: E402

DEFAULT_DT = os.environ.get("CURATE_DATATROVE_PYTHON", "/work/peers/datatrove/bin/python")

CURATE_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from curate import Pipeline, read, read_output, write
from curate.filters.c4 import C4Quality, FineWebQuality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality, GopherRepetition
inp, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
Pipeline(read(inp + "/*.jsonl"), GopherRepetition(), GopherQuality(), C4Quality(), FineWebQuality(),
         ExactDedup(), write(work + "/out")).run(work_dir=work + "/run", workers=workers, progress=False)
secs = time.perf_counter() - t0
ids = read_output(work + "/out")["id"].to_list()
open(work + "/kept_ids.json", "w").write(json.dumps(ids))
print(json.dumps({"seconds": secs, "kept": len(ids)}))
"""


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _cpu_ticks(pid: int) -> int:
    """A live process's own utime + stime (clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def _vmhwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; its last stdout line (JSON) plus wall and CPU seconds of its process tree (``wait4``:
    the child and every descendant it waited for) and the largest per-process VmHWM (MB)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak: dict[int, int] = {}
        ticks: dict[int, int] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for p in _tree(proc.pid):
                    peak[p] = max(peak.get(p, 0), _vmhwm(p))
                    ticks[p] = max(ticks.get(p, 0), _cpu_ticks(p))
                done.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        done.set()
        th.join()
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read()[-3000:]}")
        res = json.loads(out.read().strip().splitlines()[-1])
    # wait4 misses descendants nobody waited for (DataTrove's pool workers are forked by a forkserver
    # that is never reaped): their /proc figures, sampled every 0.1 s, are the floor
    waited = ru.ru_utime + ru.ru_stime
    seen = sum(ticks.values()) / os.sysconf("SC_CLK_TCK")
    res.update(wall=wall, cpu=max(waited, seen), peak_mb=max(peak.values(), default=0) / 1024)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--small", type=int, default=200, help="documents of the start-up run")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--sides", default="curate,datatrove-spacy,datatrove-regex")
    ap.add_argument("--datatrove-python", default=DEFAULT_DT)
    a = ap.parse_args()
    work = HERE / "_work" / "bench_filters"
    shutil.rmtree(work, ignore_errors=True)
    docs = real_documents(a.docs)
    write_shards(docs, work / "input", a.shards)
    write_shards(docs[:a.small], work / "small", a.shards)
    sides = a.sides.split(",")
    if any(s.startswith("datatrove") for s in sides) and not Path(a.datatrove_python).exists():
        print(f"DataTrove environment {a.datatrove_python} not found (benchmarks/setup_peers.sh builds it): "
              "DataTrove skipped")
        sides = [s for s in sides if not s.startswith("datatrove")]
    load0 = os.getloadavg()
    rows: list[dict] = []
    for side in sides:
        for w in map(int, a.workers.split(",")):
            def cmd(inp: Path, out: Path, side: str = side, w: int = w) -> list[str]:
                shutil.rmtree(out, ignore_errors=True)
                if side == "curate":
                    return [sys.executable, "-c", CURATE_SCRIPT, str(inp), str(out), str(w)]
                return [a.datatrove_python, str(HERE / "_datatrove_filters.py"), str(inp), str(out), str(w),
                        side.split("-", 1)[1]]
            tag = f"{side}-w{w}"
            measure(cmd(work / "small", work / f"{tag}-warm"))
            small = measure(cmd(work / "small", work / f"{tag}-small"))
            big = measure(cmd(work / "input", work / tag))
            rows.append({"side": side, "workers": w, "small": small, "big": big, "kept_ids": work / tag / "kept_ids.json"})
            print(f"  {tag}: start-up {small['wall']:.2f}s wall {small['cpu']:.2f} CPU-s; full {big['wall']:.1f}s wall "
                  f"{big['cpu']:.1f} CPU-s, peak {big['peak_mb']:.0f} MB, kept {big['kept']:,}", flush=True)
    load1 = os.getloadavg()
    mb = sum(len(d["text"]) for d in docs) / 1e6
    print(f"corpus: {a.docs:,} real documents ({mb:.1f} MB), {a.shards} shards; start-up run: {a.small} documents; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after ({os.cpu_count()} cores)")
    head = (f"{'side':<16}{'workers':>7} | {'start-up wall s':>15}{'CPU s':>7} | {'full wall s':>11}{'CPU s':>7}"
            f"{'docs/s':>8}{'docs/CPU-s':>11} | {'steady docs/CPU-s':>17}{'docs/s':>8} | {'peak MB':>8}{'kept':>7}")
    print(head)
    for r in rows:
        s, b = r["small"], r["big"]
        extra = a.docs - a.small
        steady_cpu = extra / max(b["cpu"] - s["cpu"], 1e-9)
        steady_wall = extra / max(b["wall"] - s["wall"], 1e-9)
        print(f"{r['side']:<16}{r['workers']:>7} | {s['wall']:>15.2f}{s['cpu']:>7.2f} | {b['wall']:>11.1f}"
              f"{b['cpu']:>7.1f}{a.docs / b['wall']:>8,.0f}{a.docs / b['cpu']:>11,.0f} | {steady_cpu:>17,.0f}"
              f"{steady_wall:>8,.0f} | {b['peak_mb']:>8,.0f}{b['kept']:>7,}")
    by = {(r["side"], r["workers"]): r for r in rows}
    for w in map(int, a.workers.split(",")):
        cur = by.get(("curate", w))
        for side in sides:
            other = by.get((side, w))
            if cur is None or other is None or side == "curate":
                continue
            ka = set(json.loads(Path(cur["kept_ids"]).read_text()))
            kb = set(json.loads(Path(other["kept_ids"]).read_text()))
            print(f"{w} workers, curate vs {side}: {other['big']['cpu'] / cur['big']['cpu']:.1f}x docs per CPU-second, "
                  f"{other['big']['wall'] / cur['big']['wall']:.1f}x wall; keep/drop agreement "
                  f"{1 - len(ka ^ kb) / a.docs:.3%} of documents")
    for side in sides:
        one, two = by.get((side, 1)), by.get((side, 2))
        if one and two:
            print(f"{side}: 2 workers vs 1: {one['big']['wall'] / two['big']['wall']:.2f}x wall, CPU-seconds "
                  f"{two['big']['cpu'] / one['big']['cpu']:.2f}x of one worker's")


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"(bench wall time {time.time() - t:.0f}s)")
