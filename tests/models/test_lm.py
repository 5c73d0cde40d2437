"""The language model: cached prefill in chunks and token-by-token decode equal the full forward, for every
family and for hybrids with MoE; left padding leaks into nothing; SSM states keep a fixed size; bad inputs fail."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers import AttentionState
from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close

PRESETS = ["tiny-mamba", "tiny-mamba2", "tiny-llama", "tiny-hybrid-moe", "tiny-s4"]
JAMBA_LIKE = dict(vocab_size=64, d_model=32, n_layers=4, mixers=["mamba", "attention", "mamba", "mamba"],
                  feed_forwards=["mlp", "moe", "mlp", "moe"], use_rope=False, mamba_inner_norms=True,
                  n_heads=4, n_kv_heads=2, d_ff=48, n_experts=4, moe_top_k=2)


def _model(name: str, dtype=torch.float32) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(**JAMBA_LIKE) if name == "jamba-like" else ModelConfig.from_name(name)
    model = LanguageModel(cfg).to(dtype).eval()
    with torch.no_grad():  # move every weight off its init value (norm weights of ones, D of ones, ...)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _ids(model, batch=2, seqlen=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=g)


@pytest.mark.parametrize("name", PRESETS + ["jamba-like"])
def test_chunked_prefill_then_decode_equals_full_forward(name):
    model = _model(name)
    ids = _ids(model)
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(2, 32)
        parts, start = [], 0
        for size in (5, 1, 7):  # uneven chunks, one of length 1 through forward
            parts.append(model(ids[:, start:start + size], state))
            start += size
        for t in range(start, ids.shape[1]):  # the rest token by token through step
            parts.append(model.step(ids[:, t], state)[:, None])
    assert_close(torch.cat(parts, dim=1), full, name=f"{name} cached logits")


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-hybrid-moe", "tiny-s4"])
def test_cached_decode_matches_full_forward_in_float64(name):
    model = _model(name, torch.float64)
    ids = _ids(model, seqlen=12)
    with torch.no_grad():
        full = model(ids)
        state = model.allocate_state(2, 12)
        prefill = model(ids[:, :4], state)
        steps = [model.step(ids[:, t], state) for t in range(4, 12)]
    assert_close(torch.cat([prefill, torch.stack(steps, 1)], 1), full, name=f"{name} float64 cached logits")


@pytest.mark.parametrize("name", PRESETS + ["jamba-like"])
def test_left_padded_batch_equals_each_prompt_alone(name):
    model = _model(name)
    lengths = (9, 5)
    prompts = [_ids(model, batch=1, seqlen=n, seed=i)[0] for i, n in enumerate(lengths)]
    width, n_new = max(lengths), 4
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, True
    nxt = _ids(model, batch=2, seqlen=n_new, seed=7)
    with torch.no_grad():
        state = model.allocate_state(2, width + n_new)
        last = model(ids, state, key_padding_mask=mask)[:, -1]
        decoded = [model.step(nxt[:, t], state) for t in range(n_new)]
        for row, p in enumerate(prompts):
            alone = model(torch.cat([p, nxt[row]])[None])[0]
            assert_close(last[row], alone[len(p) - 1], name=f"{name} row {row} prefill")
            assert_close(torch.stack([d[row] for d in decoded]), alone[len(p):], name=f"{name} row {row} decode")


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-s4", "tiny-hybrid-moe"])
def test_ssm_state_sizes_do_not_depend_on_context_length(name):
    model = _model(name)
    short, long = model.allocate_state(1, 16), model.allocate_state(1, 4096)
    for a, b in zip(short, long):
        if isinstance(a, AttentionState):
            assert b.kv.k.shape[1] == 4096 and a.kv.k.shape[1] == 16
            continue
        for field in ("conv_state", "ssm_state"):
            if hasattr(a, field):
                assert getattr(a, field).shape == getattr(b, field).shape


def test_hybrid_moe_reports_counts_and_aux_loss():
    model = _model("tiny-hybrid-moe")
    ids = _ids(model, batch=3, seqlen=11)
    model(ids)
    moes = model.moe_layers()
    assert len(moes) == 2
    for moe in moes:
        assert int(moe.last_expert_counts.sum()) == 3 * 11 * model.config.moe_top_k
    expected = model.config.moe_aux_loss_coef * torch.stack([m.aux_loss for m in moes]).mean()
    assert_close(model.aux_loss, expected, name="aux loss")
    model.aux_loss.backward()
    assert moes[0].router.weight.grad is not None


def test_tied_embeddings_share_one_matrix():
    tied = LanguageModel(ModelConfig.from_name("tiny-mamba", tie_embeddings=True))
    assert tied.lm_head.weight is tied.embeddings.weight
    untied = LanguageModel(ModelConfig.from_name("tiny-mamba"))
    assert untied.lm_head.weight is not untied.embeddings.weight


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1, 256]]), r"input_ids: expected token ids in \[0, 256\).*got ids in \[1, 256\]"),
    (torch.tensor([[-1, 3]]), r"got ids in \[-1, 3\]"),
    (torch.zeros(1, 0, dtype=torch.long), r"non-empty prompt"),
    (torch.zeros(3, dtype=torch.long), r"expected shape \(batch, seqlen\)"),
    (torch.zeros(1, 3), r"int32/int64"),
])
def test_bad_input_ids_are_rejected(bad, message):
    model = _model("tiny-mamba2")
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_bad_state_and_mask_are_rejected():
    model = _model("tiny-mamba2")
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="state: expected a list of 2 layer states"):
        model(ids, model.allocate_state(2, 8)[:1])
    with pytest.raises(ValueError, match=r"key_padding_mask: expected a bool tensor of shape \(2, 3\)"):
        model(ids, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("preset", ["tiny-mamba", "tiny-mamba2", "tiny-hybrid-moe"])
def test_step_with_the_pre_norm_fused_into_in_proj_equals_the_unfused_step(preset):
    """Block.fuse_in_proj routes the SSM mixers' pre-norm + in_proj through norm_linear and hands the mixer the
    projection (step(..., projected=True)): the same logits and states, step after step, as the unfused path."""
    from ssmkit.inference import allocate_cache
    from ssmkit.models.block import Block

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name(preset)).double().eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    runs = []
    for fused in (True, False):
        for block in model.layers:
            block.fuse_in_proj = fused
        state = allocate_cache(model, 2, 8)
        with torch.no_grad():
            runs.append(torch.stack([model.step(ids[:, t], state) for t in range(5)]))
    for block in model.layers:
        del block.fuse_in_proj
    assert Block.fuse_in_proj and torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-hybrid-moe", "jamba-like", "tiny-mamba2", "tiny-mamba"])
def test_one_row_fusions_give_the_unfused_step_exactly(preset, monkeypatch):
    """ssmkit.models.block.ONE_ROW_FUSIONS: at batch 1 on CUDA a block runs its pre-norm and q, k, v's projections
    as one launch (stacked weights) and its feed-forward norm and a SwiGLU MLP's gate and up as another,
    silu(gate) * up goes into the down projection, and the last add + norm_f go into the LM head; and (whatever the
    switch) a Mamba / Mamba-2 in_proj finishes the short conv's step (norm_linear conv=). Forced here on the CPU,
    where each norm_linear is the norm then F.linear (then the conv step): the static step's logits equal the
    unfused path's."""
    import ssmkit.models.block
    from ssmkit.inference import allocate_cache

    monkeypatch.setattr(ssmkit.models.block, "gemv_rows", lambda x: x.shape[0] == 1)
    model = _model(preset, torch.float64)
    ids = _ids(model, batch=1, seqlen=6)
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(ssmkit.models.block, "ONE_ROW_FUSIONS", fused)
        for layer in model.layers:
            layer.fuse_in_proj = fused
        state = allocate_cache(model, 1, 8)
        position = torch.zeros(1, dtype=torch.long)
        logits = []
        with torch.no_grad():
            for t in range(ids.shape[1]):
                logits.append(model.step(ids[:, t], state, position))
                position += 1
        runs.append(torch.stack(logits))
    for layer in model.layers:
        del layer.fuse_in_proj
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])  # the steps moved on: not a constant
