"""Hidden-state distillation, as DistillKit's ``hs_mse`` / ``hs_cosine`` losses (arcee-ai/DistillKit,
``distillkit/lossfuncs/hidden_state.py`` and ``hsd_mapping.py``), an extra term on the one training loop
(:mod:`curate.distill.trainer`, its ``aux=``).

For each aligned pair ``(s, t)`` of ``hidden_states.layers``, the student's hidden state ``h_s`` is mapped to
the teacher's width by a learned linear map ``W`` (no bias, Xavier-uniform init, as DistillKit; the identity
when the widths agree unless ``projection: always``) and compared with the teacher's ``h_t`` at every loss
position (the rows the logit loss covers):

    mse:    l(token) = (1 / d_t) * || W h_s - h_t ||^2
    cosine: l(token) = 1 - cos(W h_s, h_t)

averaged over the pairs; the run minimises ``logit loss + weight * mean over tokens of l`` (DistillKit
composes weighted terms; its README example: cross_entropy 0.25, kl 0.5, hs_cosine 0.25, hence the default
``weight: 0.25``). The projections are trained with the student (same optimizer and schedule), saved in the
trainer checkpoint (``state.pt``), never in the exported student.

Layer indices are those of transformers' ``output_hidden_states`` (what DistillKit's ``layer_mapping``
indexes): 0 = the input of the first decoder layer (the embeddings), ``i`` = the output of decoder layer
``i`` (1-based), the last one after the final norm. They are read with forward hooks during the forward
passes the loop already runs (no second teacher forward).

Report: linear CKA (Kornblith et al. 2019, :func:`curate.metrics.representation.linear_cka`) between each
pair's student and teacher hidden states on held-out loss positions, before and after training (CKA needs no
projection: it compares the two representations' similarity structures).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from curate.core.errors import ConfigError
from curate.distill.data import TokenData, collate
from curate.metrics.representation import linear_cka
from curate.models.causal_lm import IGNORE

if TYPE_CHECKING:
    from curate.distill.config import HiddenStates
    from curate.distill.signals import MicroBatch


def _layout(model: Any) -> tuple[torch.nn.ModuleList, torch.nn.Module | None]:
    """(decoder layers, final norm) of a transformers causal LM (Llama-style ``model.layers`` / ``norm`` or
    GPT-2-style ``h`` / ``ln_f``)."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"hidden_states: cannot find the decoder layers of {type(model).__name__}")
    return layers, getattr(base, "norm", None) or getattr(base, "ln_f", None)


def n_hidden(model: Any) -> int:
    """Number of hidden states transformers' ``output_hidden_states`` returns (layers + 1)."""
    return len(_layout(model)[0]) + 1


def resolve_layers(spec_layers: Any, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """The (student, teacher) hidden-state index pairs; ``n_*`` = number of hidden states (layers + 1).
    ``uniform``: student layer i -> teacher layer round(i * L_t / L_s) for i = 1..L_s. Bad indices are a
    ConfigError naming the valid range."""
    ls, lt = n_student - 1, n_teacher - 1
    if spec_layers == "uniform":
        return [(i, round(i * lt / ls)) for i in range(1, ls + 1)]
    pairs = [(int(s), int(t)) for s, t in spec_layers]
    bad = [f"({s}, {t})" for s, t in pairs if not (0 <= s < n_student and 0 <= t < n_teacher)]
    if bad:
        raise ConfigError(f"hidden_states.layers: {', '.join(bad)} out of range; student indices are 0..{ls}, "
                          f"teacher indices 0..{lt} (0 = embeddings, i = output of decoder layer i)")
    if not pairs:
        raise ConfigError("hidden_states.layers: give at least one (student, teacher) pair")
    return pairs


class _Taps:
    """Forward hooks keeping the latest hidden states ``index -> [B, T, H]`` of one model."""

    def __init__(self, model: Any, indices: set[int]) -> None:
        layers, norm = _layout(model)
        self.out: dict[int, torch.Tensor] = {}
        self.handles = []
        n = len(layers)
        for k in sorted(indices):
            if k == 0:
                self.handles.append(layers[0].register_forward_pre_hook(self._pre(0), with_kwargs=True))
            elif k == n and norm is not None:
                self.handles.append(norm.register_forward_hook(self._post(k)))
            else:
                self.handles.append(layers[k - 1].register_forward_hook(self._post(k)))

    def _pre(self, k: int) -> Any:
        def hook(_m: Any, args: tuple, kwargs: dict) -> None:
            self.out[k] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _post(self, k: int) -> Any:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            self.out[k] = out[0] if isinstance(out, tuple) else out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.out.clear()


def pair_loss(kind: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-row hidden-state loss ``[n]`` of projected student rows ``s`` and teacher rows ``t`` ``[n, d]``."""
    if kind == "mse":
        return (s - t).pow(2).mean(dim=1)
    return 1.0 - torch.nn.functional.cosine_similarity(s, t, dim=1)


class HiddenStateKD(torch.nn.Module):
    """The hidden-state term (see the module docstring); ``self(mb)`` gives ``(weight * summed per-token loss,
    {"hidden": summed per-token loss})`` for a micro-batch whose student and teacher forwards just ran."""

    def __init__(self, spec: HiddenStates, student: Any, teacher: Any) -> None:
        super().__init__()
        self.spec = spec
        self.pairs = resolve_layers(spec.layers, n_hidden(student), n_hidden(teacher))
        hs, ht = int(student.config.hidden_size), int(teacher.config.hidden_size)
        self.projections: torch.nn.ModuleList | None = None
        if hs != ht or spec.projection == "always":
            self.projections = torch.nn.ModuleList([torch.nn.Linear(hs, ht, bias=False) for _ in self.pairs])
            for proj in self.projections:
                torch.nn.init.xavier_uniform_(proj.weight)
        self._s = _Taps(student, {s for s, _ in self.pairs})
        self._t = _Taps(teacher, {t for _, t in self.pairs})
        self.student, self.teacher = [student], [teacher]  # lists: not registered as submodules (not saved)

    def project(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if self.projections is None:
            return h.float()
        w = self.projections[i].weight
        return torch.nn.functional.linear(h.to(w.dtype), w)

    def per_token(self, s_rows: list[torch.Tensor], t_rows: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the pairs of the per-row loss ``[n]`` (rows: each pair's student and teacher states)."""
        per = [pair_loss(self.spec.loss, self.project(i, s), t.float())
               for i, (s, t) in enumerate(zip(s_rows, t_rows, strict=True))]
        return torch.stack(per).mean(dim=0)

    def forward(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        s_out, t_out = self._s.out, self._t.out
        if not all(s in s_out for s, _ in self.pairs) or not all(t in t_out for _, t in self.pairs):
            return None
        s_rows = [s_out[s][:, :-1][mb.mask] for s, _ in self.pairs]
        t_rows = [t_out[t][:, :-1][mb.mask] for _, t in self.pairs]
        s_out.clear()
        t_out.clear()
        tot = self.per_token(s_rows, t_rows).sum()
        return self.spec.weight * tot, {"hidden": tot.detach()}

    @torch.no_grad()
    def cka(self, data: TokenData, *, pad_id: int, device: torch.device, batch_size: int = 8) -> list[float]:
        """Linear CKA of each pair on the loss positions of the first ``cka_examples`` examples of ``data``."""
        n = min(len(data), self.spec.cka_examples)
        if n == 0:
            return []
        student, teacher = self.student[0], self.teacher[0]
        was = student.training
        student.eval()
        s_acc: list[list[torch.Tensor]] = [[] for _ in self.pairs]
        t_acc: list[list[torch.Tensor]] = [[] for _ in self.pairs]
        for a in range(0, n, batch_size):
            idx = range(a, min(n, a + batch_size))
            b = collate([data.seqs[i] for i in idx], [data.n_prompt[i] for i in idx], pad_id)
            ids, att = b["input_ids"].to(device), b["attention_mask"].to(device)
            mask = (b["labels"][:, 1:] != IGNORE).to(device)
            student.to(device)(input_ids=ids, attention_mask=att)
            teacher.to(device)(input_ids=ids, attention_mask=att)
            for j, (s, t) in enumerate(self.pairs):
                s_acc[j].append(self._s.out[s][:, :-1][mask].float().cpu())
                t_acc[j].append(self._t.out[t][:, :-1][mask].float().cpu())
            self._s.out.clear()
            self._t.out.clear()
        student.train(was)
        return [linear_cka(torch.cat(s_acc[j]).numpy(), torch.cat(t_acc[j]).numpy()) for j in range(len(self.pairs))]

    def report(self, before: list[float], after: list[float]) -> dict[str, Any]:
        """The ``hidden_states`` entry of report.json."""
        return {"loss": self.spec.loss, "weight": self.spec.weight, "projection": self.projections is not None,
                "pairs": [{"student": s, "teacher": t, "cka_before": b, "cka_after": a}
                          for (s, t), b, a in zip(self.pairs, before, after, strict=True)]}

    def close(self) -> None:
        """Remove the hooks (after training and the CKA report)."""
        self._s.close()
        self._t.close()


def report_lines(rep: dict[str, Any]) -> list[str]:
    """The hidden-state section of report.md."""
    lines = ["", f"## Hidden-state KD ({rep['loss']}, weight {rep['weight']})", "",
             "| student layer | teacher layer | linear CKA before | linear CKA after |", "|---|---|---|---|"]
    for p in rep["pairs"]:
        b, a = p["cka_before"], p["cka_after"]
        lines.append(f"| {p['student']} | {p['teacher']} | {'-' if math.isnan(b) else f'{b:.4f}'} | "
                     f"{'-' if math.isnan(a) else f'{a:.4f}'} |")
    return lines
