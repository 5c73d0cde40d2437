"""LanguageModel.forward(cu_seqlens=): documents packed into one row give the logits and the gradients of each
document run alone, for every family and for hybrids with MoE (float64); misuse fails with a clear ValueError."""

from __future__ import annotations

import pytest
import torch

from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close

from .test_lm import JAMBA_LIKE, PRESETS

LENGTHS = [7, 1, 12, 4]  # crosses the tiny presets' SSD chunk (16) and is longer than every conv window
ALL_MIXERS = dict(vocab_size=50, d_model=16, n_layers=4, mixers=["mamba", "mamba2", "attention", "s4"],
                  feed_forwards=["mlp", "moe", "mlp", None], n_heads=2, n_kv_heads=1, mamba2_headdim=8,
                  mamba2_chunk_size=4, d_ff=24, n_experts=4, moe_top_k=2, mamba_d_state=4, mamba2_d_state=4,
                  s4_d_state=4)


def _model(name: str) -> LanguageModel:
    torch.manual_seed(0)
    fields = {"jamba-like": JAMBA_LIKE, "all-mixers": ALL_MIXERS}.get(name)
    cfg = ModelConfig(**fields) if fields is not None else ModelConfig.from_name(name)
    model = LanguageModel(cfg).to(torch.float64).eval()
    with torch.no_grad():  # move every weight off its init value (norm weights of ones, D of ones, ...)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _packed(model, lengths=LENGTHS):
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    g = torch.Generator().manual_seed(len(lengths))
    return torch.randint(0, model.config.vocab_size, (1, int(cu[-1])), generator=g), cu


def _each_alone(model, ids, cu):
    bounds = cu.tolist()
    return torch.cat([model(ids[:, s:e]) for s, e in zip(bounds[:-1], bounds[1:])], dim=1)


@pytest.mark.parametrize("name", PRESETS + ["jamba-like", "all-mixers"])
def test_packed_forward_equals_each_document_alone(name):
    model = _model(name)
    ids, cu = _packed(model)
    with torch.no_grad():
        got = model(ids, cu_seqlens=cu)
        want = _each_alone(model, ids, cu)
    assert_close(got, want, name=f"{name} packed logits")


def test_packed_gradients_equal_the_sum_over_documents_run_alone():
    model = _model("all-mixers").train()  # no capacity factor is set, so MoE routing is the same in training
    ids, cu = _packed(model)
    weights = torch.randn(1, ids.shape[1], model.config.vocab_size, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad((model(ids, cu_seqlens=cu) * weights).sum(), params)
    want = torch.autograd.grad((_each_alone(model, ids, cu) * weights).sum(), params)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, w in zip(names, got, want):
        assert_close(g, w, grad=True, name=f"d{name}")


def test_empty_documents_change_nothing_and_logits_to_keep_applies():
    model = _model("tiny-hybrid-moe")
    ids, cu = _packed(model, [5, 6])
    with torch.no_grad():
        want = model(ids, cu_seqlens=cu)
        got = model(ids, cu_seqlens=torch.tensor([0, 0, 5, 5, 11, 11]), logits_to_keep=3)
    assert_close(got, want[:, -3:], name="empty documents")


@pytest.mark.parametrize("change, match", [
    (dict(cu_seqlens=torch.tensor([0, 4, 10])), "^cu_seqlens: expected to start at 0 and end at seqlen=11"),
    (dict(cu_seqlens=torch.tensor([0, 6, 4, 11])), "^cu_seqlens: expected non-decreasing offsets"),
    (dict(cu_seqlens=torch.tensor([0.0, 11.0])), "^cu_seqlens: expected a 1-D integer tensor"),
    (dict(cu_seqlens=[0, 11]), "^cu_seqlens: expected a 1-D integer tensor"),
    (dict(key_padding_mask=torch.ones(1, 11, dtype=torch.bool)), "^cu_seqlens: .*not both"),
    (dict(state="allocate"), "^cu_seqlens: packed sequences each start from a fresh state"),
])
def test_bad_packed_input_raises_value_error_naming_cu_seqlens(change, match):
    model = _model("tiny-mamba2")
    ids, cu = _packed(model, [5, 6])
    kwargs = {"cu_seqlens": cu, **change}
    if kwargs.get("state") == "allocate":
        kwargs["state"] = model.allocate_state(1, 11)
    with pytest.raises(ValueError, match=match):
        model(ids, **kwargs)


def test_packed_rows_need_batch_one():
    model = _model("tiny-mamba")
    with pytest.raises(ValueError, match="^cu_seqlens: packed sequences need batch == 1, got batch 2"):
        model(torch.zeros(2, 4, dtype=torch.long), cu_seqlens=torch.tensor([0, 4]))
