"""Cross-tokenizer distillation: the Universal Logit Distillation loss (ULD; Boizard et al. 2024, "Towards
Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs", arXiv 2402.12030) with the
ULD reference's positional alignment or GOLD's span alignment (TRL ``GOLDTrainer``), as a teacher signal
and a loss on the one training loop (:mod:`curate.distill.trainer`).

Teacher and student do not share a vocabulary, so no token-level divergence exists between them. ULD
compares the *shapes* of the two predictions instead: with ``p`` the student's and ``q`` the teacher's
probability vector at an aligned position, both sorted in decreasing order and the shorter zero-padded
to the longer vocabulary,

    ULD(p, q) = sum_i | p_(i) - q_(i) |                                  (paper Eq. 4, the W1 closed form)

and the student minimises ``alpha * CE + (1 - alpha) * ULD`` per aligned position. The reference code
(Nicolas-BZRD/llm-recipes ``DistillationLoss``) uses ``CE + lambda * ULD`` with ``crossentropy_weight=1``
and ``--distil_factor 1.5`` in its README; that is ``alpha = 0.4`` up to an overall factor 2.5. Both
distributions are ``softmax(z / loss.temperature)`` (reference and TRL: student and teacher temperatures 1).
No ``T^2`` factor is applied (neither reference does).

Alignment (``cross_tokenizer.alignment``), on the predicted (response) tokens of each example:

* ``position`` -- the ULD reference: the k-th predicted token of the student is paired with the k-th of the
  teacher, both cut to the shorter count.
* ``spans`` -- GOLD (TRL ``use_extended_uld=True``): walking the two tokenizations' character end offsets,
  a group closes wherever both end at the same character; a group of several tokens on one side gets the
  merged distribution ``P(y | x) * prod_j P(tok_j | ...)`` -- the first position's distribution times the
  probabilities of the group's actual following tokens (the chain rule for the observed continuation,
  unnormalised, as TRL). Groups holding a token that is not predicted (the first token of a text) are left
  out, and so is a tail that only one side covers (truncation); TRL keeps a trailing leftover group.

Each group's ULD is counted at its last student row, and the trainer divides the sum by the student's
valid tokens, as for every other loss (the references average per sequence, then over the batch).

Each example's text is tokenised by both tokenizers (fast tokenizers, for the character offsets); the
teacher's tokens are looked up by the student's token sequence, so training batches and held-out batches
find theirs alike. The training loop computes the loss ``loss.chunk_tokens`` student rows at a time; a
span group cut by a chunk boundary gets its gradient only through its rows in the later chunk (the earlier
rows enter as constants), so keep ``chunk_tokens`` at or above ``batch_size * max_len`` for the exact
gradient (the default 1024 covers 4 x 256).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import torch

from curate.core.errors import ConfigError
from curate.distill.data import TokenData, collate, record_texts, split_data
from curate.distill.signals import MicroBatch
from curate.models.causal_lm import IGNORE, vocab_rows

if TYPE_CHECKING:
    from curate.distill.config import CrossTokenizer, DataSpec, DistillConfig

log = logging.getLogger(__name__)

Group = tuple[list[int], list[int]]


# ------------------------------------------------------------------------------------------ data
@dataclass
class PairedData(TokenData):
    """The student's :class:`TokenData` plus, per example, the teacher's tokens of the same text and both sides'
    character end offsets (``s_ends[i][j]``: where student token j of example i ends in the text; the
    end-of-sequence token ends at the text's end)."""

    t_seqs: list[list[int]] = field(default_factory=list)
    t_n_prompt: list[int] = field(default_factory=list)
    s_ends: list[list[int]] = field(default_factory=list)
    t_ends: list[list[int]] = field(default_factory=list)

    def subset(self, idx: Any) -> PairedData:
        idx = list(idx)
        return PairedData([self.seqs[i] for i in idx], [self.n_prompt[i] for i in idx], [],
                          [self.t_seqs[i] for i in idx], [self.t_n_prompt[i] for i in idx],
                          [self.s_ends[i] for i in idx], [self.t_ends[i] for i in idx])


def _encode(tok: Any, texts: list[str], which: str) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and character end offsets of each text (needs a fast tokenizer)."""
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"cross_tokenizer needs a fast (Rust) {which} tokenizer for character offsets")
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [[int(e) for _, e in offs] for offs in enc["offset_mapping"]]


def _n_prompt(ends: list[int], prompt_chars: int) -> int:
    """Tokens that end inside the prompt (a token straddling the boundary belongs to the response)."""
    n = 0
    while n < len(ends) and ends[n] <= prompt_chars and prompt_chars > 0:
        n += 1
    return n


def tokenize_pairs(df: pl.DataFrame, s_tok: Any, t_tok: Any, spec: DataSpec, xt: CrossTokenizer) -> PairedData:
    """Both tokenizations of each row's text (see :func:`curate.distill.data.record_texts`): the student's cut to
    ``data.max_len`` tokens (end-of-sequence appended with ``add_eos``), the teacher's to the characters the
    student's tokens cover and to ``teacher_max_len``. Rows too short on either side are skipped and counted."""
    prompts, fulls = record_texts(df, spec)
    s_ids, s_off = _encode(s_tok, fulls, "student")
    t_ids, t_off = _encode(t_tok, fulls, "teacher")
    s_eos = s_tok.eos_token_id if spec.add_eos else None
    t_eos = t_tok.eos_token_id if spec.add_eos else None
    out = PairedData([])
    skipped = 0
    for prompt, text, si, se, ti, te in zip(prompts, fulls, s_ids, s_off, t_ids, t_off, strict=True):
        s = list(si) + ([s_eos] if s_eos is not None else [])
        s_end = list(se) + ([len(text)] if s_eos is not None else [])
        s, s_end = s[: spec.max_len], s_end[: spec.max_len]
        covered = s_end[-1] if s_end else 0
        whole = len(s) == len(si) + (s_eos is not None)  # the student kept the whole text (and its eos)
        keep = [j for j, e in enumerate(te) if e <= covered]
        t = [ti[j] for j in keep] + ([t_eos] if t_eos is not None and whole else [])
        t_end = [te[j] for j in keep] + ([len(text)] if t_eos is not None and whole else [])
        t, t_end = t[: xt.teacher_max_len], t_end[: xt.teacher_max_len]
        n_p, t_np = _n_prompt(s_end, len(prompt)), _n_prompt(t_end, len(prompt))
        if len(s) - n_p < 2 or len(s) < spec.min_tokens or len(t) - t_np < 2:
            skipped += 1
            continue
        out.seqs.append(s)
        out.n_prompt.append(n_p)
        out.t_seqs.append(t)
        out.t_n_prompt.append(t_np)
        out.s_ends.append(s_end)
        out.t_ends.append(t_end)
    if skipped:
        log.info("cross_tokenizer: %d of %d rows skipped (fewer than 2 response tokens or min_tokens on a side)",
                 skipped, len(fulls))
    if not out.seqs:
        raise ConfigError("cross_tokenizer: no usable examples after tokenising with both tokenizers")
    return out


# ------------------------------------------------------------------------------------------ alignment
def align_spans(s_ends: list[int], t_ends: list[int]) -> list[Group]:
    """GOLD's span groups of two tokenizations of one text, from their character end offsets: walk both, advance
    the side that ends earlier, close a group where both end at the same character. Returns
    ``[(student token indices, teacher token indices), ...]``; a tail that never closes is dropped."""
    groups: list[Group] = []
    s = t = s0 = t0 = 0
    while s < len(s_ends) and t < len(t_ends):
        if s_ends[s] < t_ends[t]:
            s += 1
        elif s_ends[s] > t_ends[t]:
            t += 1
        else:
            s += 1
            t += 1
            groups.append((list(range(s0, s)), list(range(t0, t))))
            s0, t0 = s, t
    return groups


def align_position(s_first: int, s_len: int, t_first: int, t_len: int) -> list[Group]:
    """The ULD reference's alignment: the k-th predicted token of each side (from ``*_first``), cut to the
    shorter."""
    n = min(s_len - s_first, t_len - t_first)
    return [([s_first + k], [t_first + k]) for k in range(max(0, n))]


def example_groups(s_ends: list[int], s_np: int, t_ends: list[int], t_np: int, *, alignment: str,
                   skip_eos: bool, s_eos: bool, t_eos: bool) -> list[Group]:
    """Aligned groups of predicted tokens of one example (token indices; predicted = from ``max(n_prompt, 1)``);
    ``s_eos`` / ``t_eos``: the side's last token is end-of-sequence (left out with ``skip_eos``)."""
    s_first, t_first = max(s_np, 1), max(t_np, 1)
    s_len = len(s_ends) - (1 if skip_eos and s_eos else 0)
    t_len = len(t_ends) - (1 if skip_eos and t_eos else 0)
    if alignment == "position":
        return align_position(s_first, s_len, t_first, t_len)
    # spans: walk from the response start (the first token of a text is not predicted: its groups are dropped)
    s0, t0 = s_np, t_np
    groups = align_spans(s_ends[s0:s_len], t_ends[t0:t_len])
    out = []
    for sg, tg in groups:
        sj, tj = [s0 + j for j in sg], [t0 + j for j in tg]
        if sj[0] >= s_first and tj[0] >= t_first:
            out.append((sj, tj))
    return out


# ------------------------------------------------------------------------------------------ the loss
def uld_distance(p_sorted: torch.Tensor, q_sorted: torch.Tensor) -> torch.Tensor:
    """``sum_i |p_(i) - q_(i)|`` per row of two descending-sorted probability matrices ``[G, Vp]``, ``[G, Vq]``,
    the narrower one zero-padded (its tail then adds the other's remaining mass)."""
    m = min(p_sorted.shape[1], q_sorted.shape[1])
    return ((p_sorted[:, :m] - q_sorted[:, :m]).abs().sum(1) + p_sorted[:, m:].sum(1) + q_sorted[:, m:].sum(1))


def merged_logprobs(logp: torch.Tensor, labels: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """GOLD's merged log-distribution of each group of rows ``[G, V]``: ``logp[first] + sum of logp[r, labels[r]]``
    over the group's other rows (``labels[r]``: the token row r actually predicts)."""
    first = torch.tensor([g[0] for g in groups], dtype=torch.long, device=logp.device)
    out = logp[first]
    rest = [(gi, r) for gi, g in enumerate(groups) for r in g[1:]]
    if rest:
        gi = torch.tensor([a for a, _ in rest], dtype=torch.long, device=logp.device)
        rr = torch.tensor([r for _, r in rest], dtype=torch.long, device=logp.device)
        add = torch.zeros(len(groups), dtype=logp.dtype, device=logp.device).index_add(0, gi, logp[rr, labels[rr]])
        out = out + add[:, None]
    return out


class CrossTargets:
    """The teacher's side of one micro-batch: its log-probs on its own valid rows and the aligned groups, as
    (student rows, teacher rows) of the micro-batch; ``chunk(a, e)`` hands the loss the groups ending in
    student rows ``a:e`` (see the module docstring for groups cut by a chunk boundary)."""

    def __init__(self, t_logp: torch.Tensor, t_labels: torch.Tensor, groups: list[Group]) -> None:
        self.t_logp, self.t_labels = t_logp, t_labels
        self.groups = sorted(groups, key=lambda g: g[0][-1])
        self.cache_lp: dict[int, torch.Tensor] = {}   # detached student log-probs of rows of cut groups
        self.cache_lab: dict[int, torch.Tensor] = {}

    def chunk(self, a: int, e: int) -> CrossChunk:
        return CrossChunk(self, a, e)

    def teacher_sorted(self, groups: list[Group]) -> torch.Tensor:
        """The teacher's merged distributions of ``groups``, sorted decreasingly ``[G, V_teacher]``."""
        lp = merged_logprobs(self.t_logp, self.t_labels, [tg for _, tg in groups])
        return lp.exp().sort(dim=1, descending=True).values


@dataclass
class CrossChunk:
    parent: CrossTargets
    a: int
    e: int

    def uld(self, student_logits: torch.Tensor, labels: torch.Tensor, temperature: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-row ULD ``[e-a]`` -- each group's at its last row --, number of groups) for student rows a:e."""
        a, e, par = self.a, self.e, self.parent
        logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
        lab_lp = logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
        per = torch.zeros(e - a, dtype=logp.dtype, device=logp.device)
        here = [g for g in par.groups if a <= g[0][-1] < e]
        for sg, _ in par.groups:  # rows of groups that continue past this chunk, kept as constants
            if sg[0] < e <= sg[-1]:
                for r in sg:
                    if a <= r < e:
                        par.cache_lp[r] = logp[r - a].detach()
                        par.cache_lab[r] = lab_lp[r - a].detach()
        if not here:
            return per, torch.zeros((), device=logp.device)
        firsts = [logp[sg[0] - a] if sg[0] >= a else par.cache_lp[sg[0]] for sg, _ in here]
        add = [sum(((lab_lp[r - a] if r >= a else par.cache_lab[r]) for r in sg[1:]),
                   torch.zeros((), device=logp.device)) for sg, _ in here]
        s_lp = torch.stack(firsts) + torch.stack(add)[:, None]
        s_sorted = s_lp.exp().sort(dim=1, descending=True).values
        d = uld_distance(s_sorted, par.teacher_sorted(here))
        last = torch.tensor([sg[-1] - a for sg, _ in here], dtype=torch.long, device=logp.device)
        return per.index_add(0, last, d), torch.tensor(float(len(here)), device=logp.device)


class ULDLoss:
    """``alpha * CE + (1 - alpha) * ULD`` per student row (the TokenLoss of cross-tokenizer KD); components
    ``kd`` (the summed ULD) and ``ce``."""

    needs_teacher = True
    name = "uld"

    def __init__(self, *, alpha: float, temperature: float) -> None:
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, student_logits: torch.Tensor, target: CrossChunk,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d, _ = target.uld(student_logits, labels, self.temperature)
        total = (1.0 - self.alpha) * d
        comp = {"kd": d.detach().sum()}
        if self.alpha > 0:
            ce = torch.nn.functional.cross_entropy(student_logits.float(), labels, reduction="none")
            total = total + self.alpha * ce
            comp["ce"] = ce.detach().sum()
        return total, comp


# ------------------------------------------------------------------------------------------ the signal
@dataclass(frozen=True)
class _Entry:
    t_seq: list[int]
    t_np: int
    s_np: int
    groups: list[Group]


class CrossTokenizerSignal:
    """Runs the teacher on its own tokens of each micro-batch's texts (looked up by the student's tokens)."""

    def __init__(self, teacher: Any, datasets: list[PairedData], *, xt: CrossTokenizer, temperature: float,
                 s_eos: int | None, t_eos: int | None, t_pad: int, device: torch.device) -> None:
        self.teacher, self.temperature, self.t_pad, self.device = teacher, temperature, t_pad, device
        self.table: dict[tuple[int, ...], _Entry] = {}
        for d in datasets:
            for i, s in enumerate(d.seqs):
                t = d.t_seqs[i]
                g = example_groups(d.s_ends[i], d.n_prompt[i], d.t_ends[i], d.t_n_prompt[i],
                                   alignment=xt.alignment, skip_eos=xt.skip_eos,
                                   s_eos=s_eos is not None and s[-1] == s_eos, t_eos=t_eos is not None and t[-1] == t_eos)
                self.table[tuple(s)] = _Entry(t, d.t_n_prompt[i], d.n_prompt[i], g)

    def entries(self, mb: MicroBatch) -> list[_Entry] | None:
        lens = mb.attention_mask.sum(1).tolist()
        ids = mb.input_ids.tolist()
        out = [self.table.get(tuple(row[:n])) for row, n in zip(ids, lens, strict=True)]
        return None if any(e is None for e in out) else out  # type: ignore[return-value]

    @torch.no_grad()
    def targets(self, mb: MicroBatch) -> CrossTargets | None:
        ents = self.entries(mb)
        if ents is None:
            return None
        b = collate([e.t_seq for e in ents], [e.t_np for e in ents], self.t_pad)
        ids, att, lab = b["input_ids"].to(self.device), b["attention_mask"].to(self.device), b["labels"].to(self.device)
        lo = self.teacher(input_ids=ids, attention_mask=att).logits
        t_mask = lab[:, 1:] != IGNORE
        t_logp = torch.log_softmax(lo[:, :-1][t_mask].float() / self.temperature, dim=-1)
        groups: list[Group] = []
        s_off = t_off = 0
        s_lens = mb.attention_mask.sum(1).tolist()
        for e, s_len in zip(ents, s_lens, strict=True):
            s_first, t_first = max(e.s_np, 1), max(e.t_np, 1)
            for sg, tg in e.groups:
                groups.append(([s_off + j - s_first for j in sg], [t_off + j - t_first for j in tg]))
            s_off += s_len - s_first
            t_off += len(e.t_seq) - t_first
        return CrossTargets(t_logp, lab[:, 1:][t_mask], groups)


# ------------------------------------------------------------------------------------------ wiring
def prepare_cross(cfg: DistillConfig, teacher: Any, t_tok: Any) -> tuple[Any, Any, PairedData, PairedData, int, int]:
    """(student, student tokenizer, train, held-out, vocab, pad id) for a cross-tokenizer run: the student keeps
    its own tokenizer (``student.tokenizer`` or the model's own) and its own vocabulary."""
    from curate.models.causal_lm import load_causal_lm

    assert cfg.cross_tokenizer is not None
    student, s_tok, _ = load_causal_lm(cfg.student, device="cpu", base_config=teacher.config)
    if s_tok is None:
        raise ConfigError("cross_tokenizer: the student has no tokenizer of its own; give student.tokenizer")
    rows = vocab_rows(student)
    if len(s_tok) > rows:
        raise ConfigError(f"cross_tokenizer: the student's tokenizer has {len(s_tok)} tokens but its logits only "
                          f"{rows}; set vocab_size in student.from_config")
    xt = cfg.cross_tokenizer
    tr, ev = split_data(cfg.data, cfg.seed, lambda df: tokenize_pairs(df, s_tok, t_tok, cfg.data, xt))
    pad = s_tok.pad_token_id if s_tok.pad_token_id is not None else (s_tok.eos_token_id or 0)
    return student, s_tok, tr, ev, rows, int(pad)  # type: ignore[return-value]


def cross_mode(cfg: DistillConfig, teacher: Any, s_tok: Any, t_tok: Any, train: PairedData, ev: PairedData,
               device: torch.device) -> dict[str, Any]:
    """The trainer's ``signal=`` and ``loss=`` of a cross-tokenizer run."""
    assert cfg.cross_tokenizer is not None
    t_pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else (t_tok.eos_token_id or 0)
    sig = CrossTokenizerSignal(teacher, [train, ev], xt=cfg.cross_tokenizer, temperature=cfg.loss.temperature,
                               s_eos=s_tok.eos_token_id, t_eos=t_tok.eos_token_id, t_pad=int(t_pad), device=device)
    return {"signal": sig, "loss": ULDLoss(alpha=cfg.loss.alpha, temperature=cfg.loss.temperature)}


@torch.no_grad()
def evaluate_cross(student: Any, teacher: Any, data: PairedData, signal: CrossTokenizerSignal, *,
                   device: torch.device, pad_id: int, batch_size: int = 8, max_batches: int | None = None,
                   temperature: float = 1.0) -> dict[str, Any]:
    """Held-out metrics of a cross-tokenizer run: each model's NLL on its own tokens (per token and per
    character of the text its predicted tokens cover -- the comparable unit across tokenizers), retention on
    the per-character perplexity (teacher / student), and the mean ULD over the aligned groups."""
    from curate.models.perf import param_count

    student.eval()
    teacher.eval()
    acc = {"s_nll": 0.0, "s_tok": 0, "s_chars": 0, "t_nll": 0.0, "t_tok": 0, "t_chars": 0, "uld": 0.0, "groups": 0}
    nb = math.ceil(len(data) / batch_size)
    if max_batches:
        nb = min(nb, max_batches)
    for j in range(nb):
        idx = list(range(j * batch_size, min(len(data), (j + 1) * batch_size)))
        for side, seqs, nps, ends, model, pad in (
                ("s", [data.seqs[i] for i in idx], [data.n_prompt[i] for i in idx], [data.s_ends[i] for i in idx],
                 student, pad_id),
                ("t", [data.t_seqs[i] for i in idx], [data.t_n_prompt[i] for i in idx],
                 [data.t_ends[i] for i in idx], teacher, signal.t_pad)):
            b = collate(seqs, nps, pad)
            lo = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            lab = b["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(lo[:, :-1].float().transpose(1, 2), lab, ignore_index=IGNORE,
                                                    reduction="sum")
            acc[f"{side}_nll"] += float(nll)
            acc[f"{side}_tok"] += int((lab != IGNORE).sum())
            acc[f"{side}_chars"] += sum(e[-1] - e[max(n, 1) - 1] for e, n in zip(ends, nps, strict=True))
            if side == "s":
                s_batch = b
        s_batch["idx"] = None
        mb = MicroBatch.of(s_batch, device)
        tg = signal.targets(mb)
        if tg is None:
            continue
        s_lo = student(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1][mb.mask]
        d, g = tg.chunk(0, mb.n).uld(s_lo, mb.labels, temperature)
        acc["uld"] += float(d.sum())
        acc["groups"] += int(g)
    res: dict[str, Any] = {"eval_examples": len(data), "tokens_scored": acc["s_tok"]}
    for side, name, model in (("s", "student", student), ("t", "teacher", teacher)):
        nll = acc[f"{side}_nll"] / max(1, acc[f"{side}_tok"])
        per_char = acc[f"{side}_nll"] / max(1, acc[f"{side}_chars"])
        res[name] = {"params": param_count(model), "nll_per_token": nll, "ppl_per_token": math.exp(min(nll, 50.0)),
                     "nll_per_char": per_char, "ppl_per_char": math.exp(min(per_char, 50.0)),
                     "eval_tokens": acc[f"{side}_tok"], "eval_chars": acc[f"{side}_chars"]}
    res["retention_char_ppl"] = res["teacher"]["ppl_per_char"] / res["student"]["ppl_per_char"]
    res["uld_per_group"] = acc["uld"] / max(1, acc["groups"])
    res["aligned_groups"] = acc["groups"]
    res["compression"] = res["teacher"]["params"] / max(1, res["student"]["params"])
    return res


def report_lines(ev: dict[str, Any]) -> list[str]:
    """The cross-tokenizer section of report.md."""
    s, t = ev["student"], ev["teacher"]
    return ["", "## Cross-tokenizer KD (ULD)", "", "| metric | teacher | student |", "|---|---|---|",
            f"| NLL per own token (not comparable across tokenizers) | {t['nll_per_token']:.4g} | "
            f"{s['nll_per_token']:.4g} |",
            f"| NLL per character (comparable) | {t['nll_per_char']:.4g} | {s['nll_per_char']:.4g} |",
            f"| perplexity per character | {t['ppl_per_char']:.4g} | {s['ppl_per_char']:.4g} |",
            f"| held-out tokens | {t['eval_tokens']} | {s['eval_tokens']} |", "",
            f"Retention on per-character perplexity (teacher / student): {ev['retention_char_ppl']:.4g}; "
            f"mean ULD over {ev['aligned_groups']} aligned groups: {ev['uld_per_group']:.4g}."]
