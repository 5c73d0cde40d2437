"""Tensor parallel Mamba-2 and attention on CPU: two gloo processes (spawned here, bounded in time) each hold half of
every mixer's heads and reproduce one process's logits, decode steps and gradients (float64)."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LanguageModel
from ssmkit.train.tensor_parallel import shard_tensor_parallel
from tests.compare import assert_close
from tests.train.helpers import run_gloo_workers

WORLD = 2
TIMEOUT_S = 120


def build_model() -> LanguageModel:
    """A Mamba-2 + attention hybrid with biases, 2 Mamba-2 groups and grouped-query attention, in float64."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, mixers=["mamba2", "attention"], feed_forwards="mlp",
                      d_ff=48, mamba2_d_state=8, mamba2_headdim=8, mamba2_ngroups=2, mamba2_chunk_size=5,
                      mamba2_proj_bias=True, n_heads=4, n_kv_heads=2, attn_bias=True)
    model = LanguageModel(cfg).to(torch.float64)
    for p in model.parameters():  # biases and norm weights away from their 0 / 1 initial values
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 13), generator=g)
    return ids, torch.randn(2, 13, 64, generator=g, dtype=torch.float64)


def run(model: LanguageModel) -> dict:
    """Logits and parameter gradients of a weighted sum of logits, logits of 3 prefill + 2 decode tokens, of two
    documents packed into one row, and of a left-padded batch."""
    ids, weight = inputs()
    logits = model(ids)
    (logits * weight).sum().backward()
    out = {"logits": logits.detach()}
    out.update({f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        state = model.allocate_state(2, 8, torch.float64)
        steps = [model(ids[:, :3], state)] + [model.step(ids[:, t], state)[:, None] for t in (3, 4)]
        out["decode"] = torch.cat(steps, dim=1)
        out["packed"] = model(ids[:1], cu_seqlens=torch.tensor([0, 6, 13]))
        mask = torch.ones(2, 13, dtype=torch.bool)
        mask[1, :4] = False
        out["padded"] = model(ids, key_padding_mask=mask)[1, 4:]
    return out


def worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        out = run(shard_tensor_parallel(build_model()))
        save_file({k: v.contiguous() for k, v in out.items()}, f"{out_dir}/rank{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


def spawn(out_dir) -> list[dict]:
    run_gloo_workers(worker, out_dir, WORLD, TIMEOUT_S)
    return [load_file(str(out_dir / f"rank{r}.safetensors")) for r in range(WORLD)]


def expected_shard_grads(model: LanguageModel, rank: int) -> dict:
    """The single process's gradients cut as rank's shard: a copy of the model whose weights are the gradients,
    sharded by the same code (the slicing is linear, so the shard of the gradient is the gradient of the shard)."""
    grads = copy.deepcopy(model)
    for p, g in zip(grads.parameters(), model.parameters()):
        p.data = g.grad.clone()
    shard_tensor_parallel(grads, rank, WORLD)
    return {f"grad/{n}": p.data for n, p in grads.named_parameters()}


def test_two_ranks_with_half_the_heads_match_one_process(tmp_path):
    ranks = spawn(tmp_path)
    model = build_model()
    single = run(model)
    for r, got in enumerate(ranks):
        assert_close(got["logits"], single["logits"], name=f"rank{r} logits")
        for key in ("decode", "packed", "padded"):
            assert_close(got[key], single[key], name=f"rank{r} {key}")
        expected = expected_shard_grads(model, r)
        assert set(expected) == {k for k in got if k.startswith("grad/")}
        for key, value in expected.items():
            assert_close(got[key], value, grad=True, name=f"rank{r} {key}")
    # Each rank holds 1 / WORLD of the in_proj rows (a check that the split happened).
    key = "grad/layers.0.mixer.inner.in_proj.weight"
    assert ranks[0][key].shape[0] * WORLD == single["grad/layers.0.mixer.in_proj.weight"].shape[0]


def test_shard_rejects_groups_that_do_not_split_over_ranks():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, mixers="mamba2", mamba2_d_state=4, mamba2_headdim=8,
                      mamba2_ngroups=1)
    with pytest.raises(ValueError, match="mamba2_ngroups"):
        shard_tensor_parallel(LanguageModel(cfg), 0, WORLD)


def test_shard_rejects_attention_heads_that_do_not_split_over_ranks():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, mixers="attention", n_heads=4, n_kv_heads=1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        shard_tensor_parallel(LanguageModel(cfg), 0, WORLD)


def test_shard_rejects_a_norm_over_all_groups():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, mixers="mamba2", mamba2_d_state=4, mamba2_headdim=8,
                      mamba2_ngroups=2, mamba2_norm_per_group=False)
    with pytest.raises(ValueError, match="mamba2_norm_per_group"):
        shard_tensor_parallel(LanguageModel(cfg), 0, WORLD)
