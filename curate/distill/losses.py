"""Knowledge-distillation losses (per token, unreduced). Interface owned by issue 7 items 2-3.

All losses take flattened valid rows (``[N, V]`` student logits) and return ``Tensor[N]`` so the trainer can
sum over the whole accumulated batch and divide by the global number of valid tokens.
(Signatures first; bodies being filled in.)
"""

from __future__ import annotations

import torch

from curate.distill.topk import TopK

Teacher = torch.Tensor | TopK
LABEL_PREFIX = "[label] "
RATIONALE_PREFIX = "[rationale] "


def select_valid(logits, labels, ignore_index: int = -100, shift: bool = True):
    raise NotImplementedError


def forward_kl(student_logits, teacher, temperature: float = 1.0):
    raise NotImplementedError


def reverse_kl(student_logits, teacher, temperature: float = 1.0):
    raise NotImplementedError


def generalized_jsd(student_logits, teacher, beta: float = 0.5, temperature: float = 1.0):
    raise NotImplementedError


def skew_kl(student_logits, teacher, alpha: float = 0.1, temperature: float = 1.0):
    raise NotImplementedError


def skew_reverse_kl(student_logits, teacher, alpha: float = 0.1, temperature: float = 1.0):
    raise NotImplementedError


def bild_loss(student_logits, teacher, top_k: int = 8, temperature: float = 3.0):
    raise NotImplementedError


def token_ce(student_logits, labels, ignore_index: int = -100):
    raise NotImplementedError


def hinton_kd(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 2.0):
    raise NotImplementedError


def rationale_loss(label_loss, rationale_loss, weight: float = 0.5):
    raise NotImplementedError


def chunked_loss(fn, student_hidden_or_logits, teacher=None, *, labels=None, lm_head_weight=None,
                 chunk_tokens: int = 1024, **kw):
    raise NotImplementedError


LOSSES: dict = {}


def compute_kd_loss(name, student_logits, teacher=None, **kw):
    raise NotImplementedError
