"""LESS: select the documents whose LoRA gradients point where the target task's gradients point.

Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning"; reference
implementation princeton-nlp/LESS (``less/data_selection/collect_grad_reps.py``, ``get_info.py``,
``matching.py``) with TRAK's random projector (MadryLab/trak ``trak/projectors.py``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.core.operator import PATH_FILE, PATH_MODEL, UID, FitContext
from curate.core.registry import register
from curate.selectors.base import Selector, SelectParams

#: (prompt, response) field pairs recognised in target records without a text field
_PAIRS = (("question", "answer"), ("prompt", "response"), ("instruction", "response"),
          ("instruction", "output"), ("input", "output"))
_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def read_targets(path: str | Path, text_field: str | None = None, task_field: str = "task"
                 ) -> tuple[list[str], list[str | None], list[str]]:
    """Target examples from a ``.jsonl``/``.json`` (optionally ``.gz``) or ``.txt`` file.

    Returns ``(texts, prompts, tasks)``: ``texts`` are what the gradient is taken on; ``prompts[i]`` is the
    leading prompt part of ``texts[i]`` (for prompt masking) or None; ``tasks[i]`` the subtask name
    (``task_field``; one task when absent). A ``.txt`` file holds one example per non-empty line. A json
    record uses ``text_field`` (default ``text``) when present, else the first (prompt, response) pair of
    ``question/answer``, ``prompt/response``, ``instruction/response``, ``instruction/output``,
    ``input/output``, joined by a newline.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    stem = p.name[:-3] if p.suffix == ".gz" else p.name
    with opener(p, "rt", encoding="utf-8") as f:
        raw = f.read()
    if stem.endswith(".txt"):
        lines = [ln for ln in raw.splitlines() if ln.strip()]
        return lines, [None] * len(lines), ["all"] * len(lines)
    if stem.endswith(".json"):
        recs = json.loads(raw)
    else:
        recs = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
    texts, prompts, tasks = [], [], []
    field = text_field or "text"
    for r in recs:
        if isinstance(r, str):
            texts.append(r)
            prompts.append(None)
        elif field in r:
            texts.append(str(r[field]))
            prompts.append(None)
        else:
            pair = next(((a, b) for a, b in _PAIRS if a in r and b in r), None)
            if pair is None:
                raise ValueError(f"target record has no '{field}' field nor a prompt/response pair: {list(r)}")
            prompt = str(r[pair[0]]) + "\n"
            texts.append(prompt + str(r[pair[1]]))
            prompts.append(prompt)
        tasks.append(str(r.get(task_field, "all")) if isinstance(r, dict) else "all")
    if not texts:
        raise ValueError(f"no target examples in {p}")
    return texts, prompts, tasks


def load_causal_lm(model: str | None, gguf_file: str | None, from_config: dict | None, tokenizer: str | None,
                   device: str, dtype: str, seed: int):
    """(model, tokenizer): a local folder or hub name, or a GGUF file in that folder (both through
    :mod:`curate.selectors._hf_model`, which caches dequantised GGUF models on disk), or a randomly
    initialised model from a transformers config dict (tests). The returned model is a private copy
    (LoRA injection edits modules in place; the shared loader memoises its models)."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from curate.selectors._hf_model import load_causal_lm as hf_load
    from curate.selectors._hf_model import resolve_dtype

    tdtype = resolve_dtype(dtype, device)
    if from_config is not None:
        if tokenizer is None:
            raise ValueError("from_config needs a tokenizer path")
        cfg = dict(from_config)
        conf = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(conf).to(device=device, dtype=tdtype)
        tok = AutoTokenizer.from_pretrained(tokenizer)
    else:
        shared, tok, _ = hf_load(model, gguf_file=gguf_file, device=device, dtype=dtype)
        lm = copy.deepcopy(shared)
        if tokenizer is not None:
            tok = AutoTokenizer.from_pretrained(tokenizer)
    return lm.eval(), tok


@register("less")
class Less(Selector):
    """Scores each document by LESS gradient similarity to target-task examples; keeps the best.

    Steps (defaults from princeton-nlp/LESS; see ``curate/selectors/_lora_grads.py``):

    1. Warm-up: LoRA (r 128, alpha 512, dropout 0.1 on q/k/v/o_proj; ``get_info.py`` /
       ``warmup_lora_train.sh``) trained on a random ``warmup_fraction`` (5 %) of the pool for 4 epochs,
       lr 2e-5, linear schedule with 3 % warm-up, AdamW, 32 examples per step; a checkpoint with the
       Adam moments after every epoch.
    2. Features per checkpoint: each pool document's LoRA gradient (loss = mean token cross-entropy),
       Adam-preconditioned with the checkpoint's moments (``m'/sqrt(v'+1e-8)``, ``collect_grad_reps.py``);
       each target example's plain gradient. Both projected with a seeded Rademacher matrix to
       ``proj_dim`` (8192) dimensions, generated in bounded tiles (``_projection.py``), then
       L2-normalised.
    3. Score (``matching.py``): ``sum_i w_i cos(doc, target)`` over checkpoints, ``w_i`` = mean learning
       rate of epoch i normalised to sum 1; then the mean over each task's target examples and the max
       over tasks (``task_field`` of the target file; one task when absent).

    Target file: jsonl/json/txt (see :func:`read_targets`). The pool's ``text`` is taken whole (loss on
    every token); ``mask_prompt`` masks the prompt part of target pairs as the reference does for
    instruction data. Deviations from the reference: features are float32 (it casts to fp16 for the
    projection); the projection matrix has TRAK's distribution but not its random stream; the warm-up is
    a plain AdamW loop with the reference's hyper-parameters rather than HF ``Trainer``; one ``seed``
    drives the warm-up sample (reference ``data_seed`` 3), LoRA init, training order and projection.
    Per-example gradients come from batched backward passes, exact (tested against single-example
    backward). Checkpoints live under the stage's scratch folder and are reused on a rerun.
    Adds the column ``less_score`` (higher = more useful for the target task); selection by
    threshold / top_k / fraction / budget_tokens (reference: top 5 %).
    """

    score_column: ClassVar[str] = "less_score"
    higher_is_better: ClassVar[bool] = True
    score_doc: ClassVar[str] = "checkpoint-weighted cosine of the LoRA gradient with the target task's, max over tasks"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "safetensors")
    extra: ClassVar[str] = "distill"

    class Params(SelectParams):
        target: str = Field(..., json_schema_extra=PATH_FILE, description="jsonl/json/txt file of target-task "
                            "examples (required)")
        model: str | None = Field(None, json_schema_extra=PATH_MODEL, description="causal LM folder or hub name "
                                  "(or the folder of gguf_file); required unless from_config")
        gguf_file: str | None = Field(None, description="GGUF file name inside `model` (dequantised)")
        from_config: dict[str, Any] | None = Field(None, description="build a random model from this "
                                                     "transformers config dict instead (tests); needs tokenizer")
        tokenizer: str | None = Field(None, json_schema_extra=PATH_MODEL, description="tokenizer folder "
                                      "(default: the model's)")
        warmup_fraction: float = Field(0.05, gt=0, le=1, description="share of the pool for the LoRA warm-up (LESS: 5 %)")
        warmup_epochs: int = Field(4, ge=1, description="warm-up epochs; one checkpoint per epoch (LESS: 4)")
        lr: float = Field(2e-5, gt=0, description="warm-up peak learning rate (LESS: 2e-5)")
        warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up share of the schedule (LESS: 0.03)")
        grad_accum: int = Field(32, ge=1, description="examples per optimizer step (reference bs 1 x accum 32)")
        lora_r: int = Field(128, ge=1, description="LoRA rank (LESS warmup_lora_train.sh: 128)")
        lora_alpha: float = Field(512.0, gt=0, description="LoRA alpha (LESS: 512)")
        lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout (LESS: 0.1)")
        lora_targets: list[str] = Field(default_factory=lambda: list(_LORA_TARGETS), description="modules that "
                                        "get LoRA adapters (LESS: q_proj, k_proj, v_proj, o_proj)")
        proj_dim: int = Field(8192, ge=1, description="random projection dimension (LESS: 8192)")
        checkpoints: list[int] | None = Field(None, description="epochs (1-based) whose checkpoints score; "
                                              "default all")
        train_gradient: Literal["adam", "sgd", "sign"] = Field("adam", description="pool feature type (LESS collect_grad_reps: adam)")
        max_len: int = Field(2048, ge=2, description="tokens per example (truncated)")
        batch_size: int = Field(8, ge=1, description="examples per forward/backward (curate default 8; no effect on the result)")
        mask_prompt: bool = Field(False, description="loss on the response part of target pairs only (default false: whole text)")
        text_field: str | None = Field(None, description="text field of target records (default 'text')")
        task_field: str = Field("task", description="subtask field of target records (default task; one task when absent)")
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
            "auto", description="auto: bf16 (fp16 without bf16 support) on CUDA, else fp32")

        @model_validator(mode="after")
        def _model_and_checkpoints(self):
            # checked when the pipeline is built, not after the stages before this one have run
            if self.model is None and self.from_config is None:
                raise ValueError("less needs `model` (or `from_config` with `tokenizer`)")
            if self.from_config is not None and self.tokenizer is None:
                raise ValueError("from_config needs a tokenizer path")
            if self.checkpoints and (max(self.checkpoints) > self.warmup_epochs or min(self.checkpoints) < 1):
                raise ValueError(f"checkpoints {self.checkpoints} must be epochs in 1..{self.warmup_epochs}")
            return self

    def compute_scores(self, ctx: FitContext) -> pl.DataFrame:
        import torch

        from curate.selectors import _lora_grads as lg

        p = self.params
        device = torch.device(ctx.device)
        torch.manual_seed(p.seed)
        try:
            texts, prompts, tasks = read_targets(p.target, p.text_field, p.task_field)
        except (OSError, ValueError) as e:
            raise self.error(f"cannot read the target examples {p.target}: {e}", param="target") from e
        frames = [b.select(UID) for b in ctx.iter_batches(columns=[UID])]
        uids = pl.concat(frames)[UID].to_numpy() if frames else np.zeros(0, dtype=np.uint64)
        n = len(uids)
        if n == 0:
            return pl.DataFrame({UID: [], "score": []}, schema={UID: pl.UInt64, "score": pl.Float64})
        lm, tok = load_causal_lm(p.model, p.gguf_file, p.from_config, p.tokenizer, ctx.device, p.dtype, p.seed)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        model = lg.add_lora(lm, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_targets, p.seed)

        # 1. warm-up on a seeded random sample of the pool
        rng = np.random.default_rng(p.seed)
        k = max(1, int(round(p.warmup_fraction * n)))
        sample = np.sort(rng.choice(n, size=k, replace=False))
        sample_uids = pl.Series(UID, uids[sample])
        warm_texts = pl.concat([b.filter(pl.col(UID).is_in(sample_uids.implode()))
                                for b in ctx.iter_batches(columns=[UID, "text"])])["text"].fill_null("").to_list()
        warm = lg.tokenize(tok, warm_texts, p.max_len)
        ck_dir = ctx.scratch_dir / "less_checkpoints"
        metas = lg.warmup_train(model, warm, ck_dir, epochs=p.warmup_epochs, lr=p.lr,
                                warmup_ratio=p.warmup_ratio, grad_accum=p.grad_accum, batch_size=p.batch_size,
                                pad_id=pad_id, seed=p.seed, device=device)
        chosen = p.checkpoints or [m["epoch"] for m in metas]
        w = np.array([metas[e - 1]["mean_lr"] for e in chosen], dtype=np.float64)
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))

        # 2-3. features per checkpoint, cosine to targets, mean per task, weighted over checkpoints
        task_names = sorted(set(tasks))
        task_idx = torch.tensor([task_names.index(t) for t in tasks], device=device)
        counts = torch.bincount(task_idx, minlength=len(task_names)).float()
        target_ex = lg.tokenize(tok, texts, p.max_len, prompts if p.mask_prompt else None)
        grads = lg.PerExampleGrads(model)
        from curate.selectors._projection import RademacherProjector

        dim = sum(q.numel() for _, q in grads.params)
        proj = RademacherProjector(dim, p.proj_dim, seed=p.seed, device=device)
        per_task = np.zeros((n, len(task_names)), dtype=np.float64)
        for wi, epoch in zip(w, chosen):
            m, v = lg.load_checkpoint(model, ck_dir / f"epoch-{epoch}", device)
            tfeat = features(grads, proj, target_ex, p.batch_size, pad_id, device, "sgd", m, v)
            row = 0
            for b in ctx.iter_batches(columns=[UID, "text"]):
                ex = lg.tokenize(tok, b["text"].fill_null("").to_list(), p.max_len)
                f = features(grads, proj, ex, p.batch_size, pad_id, device, p.train_gradient, m, v)
                cos = f @ tfeat.T  # (docs, targets)
                mean = torch.zeros(cos.shape[0], len(task_names), device=device).index_add_(1, task_idx, cos)
                per_task[row:row + len(ex)] += wi * (mean / counts).double().cpu().numpy()
                row += len(ex)
        score = per_task.max(axis=1)
        return pl.DataFrame({UID: uids, "score": score}, schema={UID: pl.UInt64, "score": pl.Float64})


def features(grads, proj, examples, batch_size: int, pad_id: int, device, kind: str, m=None, v=None,
             buffer_bytes: int = 1 << 28):
    """L2-normalised projected gradient features of ``examples`` (in their order), float32.

    ``kind``: ``sgd`` (plain gradient), ``adam`` (Adam-preconditioned with moments ``m``, ``v``) or
    ``sign`` (sign of the gradient), the reference's three ``gradient_type`` values. Micro-batches
    group examples of similar length to limit padding; gradients are buffered (up to ``buffer_bytes``,
    at most 256 examples) before each projection, because a projection regenerates the random tiles
    when the matrix is too large to cache (the reference projects every 16 examples for the same reason).
    """
    import torch

    from curate.selectors import _lora_grads as lg

    order = np.argsort([len(e.input_ids) for e in examples], kind="stable")
    out = torch.zeros(len(examples), proj.proj_dim, device=device)
    max_buf = max(batch_size, min(256, buffer_bytes // (4 * proj.dim)))
    buf_idx: list[np.ndarray] = []
    buf: list[list] = []

    def flush():
        rows = torch.as_tensor(np.concatenate(buf_idx), device=device)
        out[rows] = proj.project_chunks([torch.cat(parts) for parts in zip(*buf)])
        buf_idx.clear()
        buf.clear()

    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        g, _ = grads.compute(lg.collate([examples[j] for j in idx], pad_id, device))
        if kind == "adam":
            g = lg.adam_transform(g, m, v)
        elif kind == "sign":
            g = [torch.sign(x) for x in g]
        buf_idx.append(idx)
        buf.append(g)
        if sum(len(b) for b in buf_idx) >= max_buf:
            flush()
    if buf_idx:
        flush()
    return torch.nn.functional.normalize(out, dim=1)
