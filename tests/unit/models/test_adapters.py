"""Adapters against the TransformerLens oracle: activations, processed weights, hooks."""

from __future__ import annotations

import pytest
import torch

from helpers import ARCHS, VOCAB, tiny_model, tl_oracle
from universal_neurons.models.adapters import ADAPTERS, adapter_for
from universal_neurons.models.adapters.gpt2 import GPT2Adapter
from universal_neurons.models.adapters.llama import LlamaAdapter
from universal_neurons.models.adapters.neox import NeoXAdapter

ATOL = 1e-4
DEFAULT = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
WEIGHT_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O",
                "W_in", "b_in", "W_gate", "W_out", "b_out", "W_U", "b_U")


@pytest.fixture(scope="module", params=tuple(ARCHS))
def pair(request):
    """(arch, HF model, adapter, TL oracle with TL's default processing)."""
    model = tiny_model(request.param)
    tl = tl_oracle(model, **DEFAULT)
    return request.param, model, adapter_for(model), tl


def tokens(batch: int = 3, pos: int = 11) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(1))


def test_registry_picks_adapter_by_model_type():
    assert ADAPTERS["gpt2"] is GPT2Adapter
    assert ADAPTERS["gpt_neox"] is NeoXAdapter
    assert ADAPTERS["llama"] is ADAPTERS["mistral"] is ADAPTERS["qwen2"] is LlamaAdapter


def test_sizes_match_transformer_lens(pair):
    arch, _, a, tl = pair
    c = tl.cfg
    assert (a.n_layers, a.d_model, a.d_mlp, a.n_heads, a.d_head, a.d_vocab, a.n_ctx) == (
        c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.d_head, c.d_vocab, c.n_ctx)
    assert a.n_key_value_heads == (c.n_key_value_heads or c.n_heads)
    if arch in ("llama", "qwen2"):
        assert a.n_key_value_heads < a.n_heads  # the GQA path is exercised


def test_capture_matches_tl_hooks(pair):
    _, _, a, tl = pair
    x = tokens()
    acts = a.capture(x, sites=("pre", "post"))
    _, cache = tl.run_with_cache(x)
    for site in ("pre", "post"):
        assert acts[site].shape == (a.n_layers, *x.shape, a.d_mlp)
        tl_acts = torch.stack([cache[f"blocks.{i}.mlp.hook_{site}"] for i in range(a.n_layers)])
        torch.testing.assert_close(acts[site], tl_acts, atol=ATOL, rtol=0)


def test_stop_after_last_mlp_same_and_stops(pair):
    _, _, a, _ = pair
    x = tokens()
    calls = []
    h = a.final_norm_module().register_forward_hook(lambda *_: calls.append(1))
    try:
        stopped = a.capture(x, sites=("post", "pre"), stop_after_last_mlp=True)
        assert not calls  # the final norm never ran
        full = a.capture(x, sites=("pre", "post"), stop_after_last_mlp=False)
        assert calls
        only_pre = a.capture(x, sites=("pre",))
    finally:
        h.remove()
    for site in ("pre", "post"):
        torch.testing.assert_close(stopped[site], full[site], atol=0, rtol=0)
    torch.testing.assert_close(only_pre["pre"], full["pre"], atol=0, rtol=0)


def test_attention_modules_read_tl_queries_keys_values(pair):
    """The adapter's attention layout: per-head q/k/v read from the projections' outputs
    equal TL's ``hook_q/k/v`` (pre-rotary; GQA heads repeated), values less
    ``value_bias()`` (TL folds value biases into ``b_O``); ``out`` sees TL's ``hook_z``
    plus that bias."""
    _, model, a, tl = pair
    x = tokens()
    _, cache = tl.run_with_cache(x)
    for layer in range(a.n_layers):
        s = a.attention_modules(layer)
        seen, handles = {}, []
        for kind in ("q", "k", "v"):
            handles.append(s.projection(kind).register_forward_hook(
                lambda _m, _a, out, kind=kind, s=s, seen=seen: seen.__setitem__(
                    kind, s.heads(kind, out))))
        handles.append(s.out.register_forward_pre_hook(
            lambda _m, args, seen=seen: seen.__setitem__("z", args[0])))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        for kind in ("q", "k", "v"):
            want = cache[f"blocks.{layer}.attn.hook_{kind}"]  # [b, pos, heads (or kv heads), d]
            want = want.repeat_interleave(a.n_heads // want.shape[-2], dim=-2)
            got = seen[kind] - (s.value_bias() if kind == "v" else 0.0)
            assert got.shape == (*x.shape, a.n_heads, a.d_head)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        # attention weights sum to one, so HF's z carries the value bias that TL folded out
        z = (cache[f"blocks.{layer}.attn.hook_z"] + s.value_bias()).flatten(-2)  # [b, pos, H * d]
        torch.testing.assert_close(seen["z"], z, atol=ATOL, rtol=0)


def test_every_adapter_declares_an_attention_layout():
    from universal_neurons.errors import UserError
    from universal_neurons.models.adapters.attention_layout import AttentionLayout

    assert all(cls.attention_layout is not None for cls in ADAPTERS.values())
    for bad in ({}, {"qkv": "attn.c_attn", "q": "q"}, {"q": "q", "k": "k"}):
        with pytest.raises(ValueError, match="either a fused qkv"):
            AttentionLayout(norm="ln", o="out", **bad)

    class NoLayout(GPT2Adapter):
        attention_layout = None

    with pytest.raises(UserError, match="declares no attention layout"):
        NoLayout(tiny_model("gpt2")).attention_modules(0)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_even_on_error(pair):
    _, model, a, _ = pair
    before = _hook_count(model)
    a.capture(tokens())
    assert _hook_count(model) == before
    with pytest.raises(IndexError):  # token id out of the vocabulary fails mid-forward
        a.capture(torch.full((1, 4), VOCAB + 5))
    assert _hook_count(model) == before


def test_capture_rejects_unknown_site(pair):
    with pytest.raises(ValueError, match="sites"):
        pair[2].capture(tokens(), sites=("mid",))


def test_hook_points_see_the_activations(pair):
    """post_activation_hook_point/pre_activation_hook_point see what capture returns, and
    changing the post-activations there changes the model's output."""
    _, model, a, _ = pair
    x = tokens(1, 5)
    ref = a.capture(x, sites=("pre", "post"))
    for site, point in (("pre", a.pre_activation_hook_point), ("post", a.post_activation_hook_point)):
        module, kind = point(1)
        seen: list[torch.Tensor] = []
        if kind == "output":
            h = module.register_forward_hook(lambda _m, _a, out, seen=seen: seen.append(out))
        else:
            h = module.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            model(x)
        h.remove()
        torch.testing.assert_close(seen[0], ref[site][1], atol=0, rtol=0)
    module, kind = a.post_activation_hook_point(0)
    with torch.no_grad():
        clean = model(x).logits
        if kind == "output":
            h = module.register_forward_hook(lambda _m, _a, out: torch.zeros_like(out))
        else:
            h = module.register_forward_pre_hook(lambda _m, args: (torch.zeros_like(args[0]),))
        ablated = model(x).logits
        h.remove()
    assert not torch.allclose(clean, ablated)
    assert a.attention_module(0) is not None


def test_processed_weights_match_tl(pair):
    arch, _, a, tl = pair
    pw = a.processed_weights()
    assert pw.normalization_type == tl.cfg.normalization_type
    for name in WEIGHT_NAMES:
        ours = getattr(pw, name)
        if name == "W_pos" and arch != "gpt2":
            assert ours is None
            continue
        if name == "W_gate" and arch in ("gpt2", "neox"):
            assert ours is None
            continue
        theirs = getattr(tl, name)
        assert ours.dtype == torch.float32 and ours.device.type == "cpu", name
        assert ours.shape == theirs.shape, name
        torch.testing.assert_close(ours, theirs.detach(), atol=ATOL, rtol=0, msg=name)


def test_processed_weights_reproduce_the_model(pair):
    """The folded weights still compute the model: hook_pre from the residual stream."""
    _, _, a, tl = pair
    pw = a.processed_weights()
    x = tokens(1, 6)
    _, cache = tl.run_with_cache(x)
    normed = cache["blocks.1.ln2.hook_normalized"]  # [batch, pos, d_model], no weights
    w = pw.W_gate if pw.W_gate is not None else pw.W_in
    b = 0 if pw.W_gate is not None else pw.b_in[1]
    torch.testing.assert_close(normed @ w[1] + b, cache["blocks.1.mlp.hook_pre"], atol=ATOL,
                               rtol=0)


@pytest.mark.parametrize("flags", [
    {"fold_ln": False, "center_writing_weights": True, "center_unembed": False},
    {"fold_ln": True, "center_writing_weights": False, "center_unembed": True,
     "fold_value_biases": False},
])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_processing_flags_match_tl(arch, flags):
    model = tiny_model(arch)
    tl = tl_oracle(model, **flags)
    pw = adapter_for(model).processed_weights(**flags)
    for name in ("W_E", "W_Q", "W_K", "b_V", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out",
                 "W_U", "b_U"):
        torch.testing.assert_close(getattr(pw, name), getattr(tl, name).detach(), atol=ATOL,
                                   rtol=0, msg=f"{name} {flags}")
    if not flags["fold_ln"]:
        assert pw.normalization_type == tl.cfg.normalization_type
        torch.testing.assert_close(pw.ln1_w, torch.stack([b.ln1.w for b in tl.blocks]).detach())
        torch.testing.assert_close(pw.ln_final_w, tl.ln_final.w.detach())


def test_processed_weights_leave_model_unchanged(pair):
    _, model, a, _ = pair
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pw = a.processed_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(t.data_ptr() in ptrs for t in pw.tensors().values())
    assert set(pw.tensors()) >= {"W_in", "W_out", "W_U"}


def test_unsupported_architecture_names_it():
    from transformers import GPTJConfig, GPTJForCausalLM

    from universal_neurons.errors import UserError

    model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=16,
                                       n_positions=8, rotary_dim=8))
    with pytest.raises(UserError, match="'gptj'.*gpt2"):
        adapter_for(model, "my-gptj")


def test_capture_rows_are_the_kept_tokens_of_capture(pair):
    _, _, a, _ = pair
    x = tokens()
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    full = a.capture(x, sites=("pre", "post"))
    for mask in (keep, None, torch.ones_like(keep)):
        rows = a.capture_rows(x, mask, sites=("pre", "post"))
        for site in ("pre", "post"):
            ref = full[site].permute(1, 2, 0, 3).reshape(x.numel(), -1)  # [b*pos, L*d]
            if mask is not None:
                ref = ref[mask.reshape(-1)]
            assert rows[site].dtype == torch.float32
            torch.testing.assert_close(rows[site], ref, atol=0, rtol=0)


def test_fused_activations_match_transformer_lens():
    from transformers.activations import NewGELUActivation

    from universal_neurons.models.adapters.gpt2 import FusedGELUTanh

    v = torch.linspace(-8, 8, 100_001)
    assert (FusedGELUTanh()(v) - NewGELUActivation()(v)).abs().max() < 2e-6
    model = tiny_model("gpt2")
    tl = tl_oracle(model, **DEFAULT)
    a = adapter_for(model)
    x = tokens()
    before = a.capture(x, sites=("post",))["post"]
    assert a.fuse_activations() == a.n_layers
    assert all(isinstance(a.block(i).mlp.act, FusedGELUTanh) for i in range(a.n_layers))
    after = a.capture(x, sites=("post",))["post"]
    _, cache = tl.run_with_cache(x)
    tl_acts = torch.stack([cache[f"blocks.{i}.mlp.hook_post"] for i in range(a.n_layers)])
    torch.testing.assert_close(after, tl_acts, atol=ATOL, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
