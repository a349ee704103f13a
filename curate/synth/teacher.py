"""Teacher backend protocol shared by the KD trainer and synthetic-data generators.
Signatures first; bodies being filled in. torch/transformers are imported lazily (curate.synth is
scanned for operators)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class TeacherBackend(Protocol):
    name: str

    @property
    def tokenizer(self): ...
    @property
    def vocab_size(self) -> int: ...
    def logits(self, input_ids, attention_mask=None): ...
    def topk_logprobs(self, input_ids, attention_mask=None, k: int = 16): ...
    def generate(self, prompts, max_new_tokens=128, temperature=1.0, top_p=1.0, seed=None) -> list[str]: ...


class LocalHFTeacher:
    def __init__(self, path_or_model, gguf_file=None, device=None, dtype=None) -> None:
        raise NotImplementedError
