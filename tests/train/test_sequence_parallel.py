"""Sequence parallel SSD on CPU: two gloo processes (spawned here, bounded in time), each holding a contiguous slice
of the sequence, reproduce one process's outputs, final state and gradients of every input (float64)."""


import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.models.config import ModelConfig
from ssmkit.models.lm import LanguageModel
from ssmkit.ops.ssd import ssd
from ssmkit.train.sequence_parallel import (incoming_state, sequence_slice, shard_sequence_parallel,
                                            ssd_sequence_parallel)
from tests.compare import assert_close
from tests.train.helpers import run_gloo_workers

WORLD = 2
TIMEOUT_S = 120
# (seqlen, ngroups, chunk_size, with h0): chunks that do not divide the slices, one position per rank (and rank 0
# starting from zeros), one chunk per slice
CASES = [(23, 2, 5, True), (2, 1, 4, False), (17, 4, 16, True)]
SLICED = ("x", "dt", "B", "C", "z")  # per-position inputs: each rank owns a slice
SHARED = ("A", "D", "dt_bias", "h0")  # replicated inputs: the ranks' gradients add up


def case_inputs(seqlen: int, ngroups: int) -> dict:
    g = torch.Generator().manual_seed(seqlen)
    batch, nheads, headdim, dstate = 2, 4, 3, 5
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"x": r(batch, seqlen, nheads, headdim), "dt": r(batch, seqlen, nheads),
            "B": r(batch, seqlen, ngroups, dstate), "C": r(batch, seqlen, ngroups, dstate),
            "z": r(batch, seqlen, nheads, headdim), "A": -torch.rand(nheads, generator=g, dtype=torch.float64) - 0.5,
            "D": r(nheads), "dt_bias": r(nheads), "h0": r(batch, nheads, headdim, dstate),
            "w_y": r(batch, seqlen, nheads, headdim), "w_h": r(batch, nheads, headdim, dstate)}


def forward_and_grads(t: dict, rows: slice, chunk_size: int, parallel: bool, last: bool, with_h0: bool) -> dict:
    """Output on `rows` and gradients of sum(w_y * y) (+ sum(w_h * final state) on the last slice)."""
    names = SLICED + SHARED if with_h0 else SLICED + SHARED[:-1]
    leaves = {k: (t[k][:, rows] if k in SLICED else t[k]).clone().requires_grad_() for k in names}
    fn = ssd_sequence_parallel if parallel else ssd
    y, final = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"], z=leaves["z"],
                  dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=(0.0, 2.0), chunk_size=chunk_size,
                  initial_state=leaves.get("h0"), return_final_state=True, impl="chunked")
    loss = (t["w_y"][:, rows] * y).sum() + ((t["w_h"] * final).sum() if last else 0.0)
    loss.backward()
    out = {"y": y.detach(), "final": final.detach()}
    out.update({f"grad/{k}": v.grad for k, v in leaves.items()})
    return out


MODEL_LEN = 13


def build_model() -> LanguageModel:
    """Two Mamba-2 layers (2 groups, chunks of 4, conv width 4) with MLPs, in float64, off their initial values."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, mixers="mamba2", feed_forwards="mlp", d_ff=32,
                      mamba2_d_state=4, mamba2_headdim=8, mamba2_ngroups=2, mamba2_chunk_size=4)
    model = LanguageModel(cfg).to(torch.float64)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def model_logits_and_grads(model: LanguageModel, rows: slice) -> dict:
    """Logits of positions `rows` and parameter gradients of sum(w * logits) over those positions."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 32, (2, MODEL_LEN), generator=g)
    weight = torch.randn(2, MODEL_LEN, 32, generator=g, dtype=torch.float64)
    logits = model(ids[:, rows])
    (weight[:, rows] * logits).sum().backward()
    out = {"logits": logits.detach()}
    out.update({f"grad/{n.replace('mixer.inner.', 'mixer.')}": p.grad for n, p in model.named_parameters()})
    return out


def worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        out = {}
        for i, (seqlen, ngroups, chunk, with_h0) in enumerate(CASES):
            res = forward_and_grads(case_inputs(seqlen, ngroups), sequence_slice(seqlen, rank, WORLD), chunk,
                                    parallel=True, last=rank == WORLD - 1, with_h0=with_h0)
            out.update({f"{i}/{k}": v.contiguous() for k, v in res.items()})
        res = model_logits_and_grads(shard_sequence_parallel(build_model()), sequence_slice(MODEL_LEN, rank, WORLD))
        out.update({f"model/{k}": v.contiguous() for k, v in res.items()})
        save_file(out, f"{out_dir}/rank{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the two spawned ranks saved (one spawn serves the tests of this module)."""
    return spawn(tmp_path_factory.mktemp("sequence_parallel"))


def spawn(out_dir) -> list[dict]:
    run_gloo_workers(worker, out_dir, WORLD, TIMEOUT_S)
    return [load_file(str(out_dir / f"rank{r}.safetensors")) for r in range(WORLD)]


def test_two_ranks_with_half_the_sequence_match_one_process(ranks):
    for i, (seqlen, ngroups, chunk, with_h0) in enumerate(CASES):
        single = forward_and_grads(case_inputs(seqlen, ngroups), slice(0, seqlen), chunk, parallel=False, last=True,
                                   with_h0=with_h0)
        name = f"T={seqlen} ngroups={ngroups} chunk={chunk} h0={with_h0}"
        assert_close(torch.cat([r[f"{i}/y"] for r in ranks], dim=1), single["y"], name=f"{name} y")
        assert_close(ranks[-1][f"{i}/final"], single["final"], name=f"{name} final state")
        for k in SLICED:
            got = torch.cat([r[f"{i}/grad/{k}"] for r in ranks], dim=1)
            assert_close(got, single[f"grad/{k}"], grad=True, name=f"{name} d{k}")
        for k in SHARED if with_h0 else SHARED[:-1]:
            got = sum(r[f"{i}/grad/{k}"] for r in ranks)
            assert_close(got, single[f"grad/{k}"], grad=True, name=f"{name} d{k}")


def test_sequence_parallel_mamba2_model_matches_one_process(ranks):
    """Logits per slice, and parameter gradients summed over ranks (what DDP's all-reduce would give)."""
    single = model_logits_and_grads(build_model(), slice(0, MODEL_LEN))
    assert_close(torch.cat([r["model/logits"] for r in ranks], dim=1), single["logits"], name="logits")
    for key, value in single.items():
        if key.startswith("grad/"):
            assert_close(sum(r[f"model/{key}"] for r in ranks), value, grad=True, name=key)


def test_sequence_parallel_mamba2_rejects_other_mixers():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=2, mixers=["mamba2", "attention"], n_heads=2,
                      mamba2_d_state=4, mamba2_headdim=8)
    with pytest.raises(ValueError, match="mixers"):
        shard_sequence_parallel(LanguageModel(cfg))


@pytest.mark.parametrize("seqlen", [1, 7, 8, 9])
def test_sequence_slices_are_contiguous_and_cover_the_sequence(seqlen):
    world = 3
    slices = [sequence_slice(seqlen, r, world) for r in range(world)]
    assert slices[0].start == 0 and slices[-1].stop == seqlen
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1


def test_incoming_state_equals_scanning_the_slices_one_after_another():
    """Three slices scanned with ssd one after another, each from the previous final state, give the states that
    incoming_state composes from zero-start states and total decays."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, dt, B, C = r(1, 9, 2, 3), torch.rand(1, 9, 2, generator=g, dtype=torch.float64), r(1, 9, 1, 4), r(1, 9, 1, 4)
    A, h0 = -torch.rand(2, generator=g, dtype=torch.float64), r(1, 2, 3, 4)
    cuts = [slice(0, 4), slice(4, 5), slice(5, 9)]
    zero_start = [ssd(x[:, s], dt[:, s], A, B[:, s], C[:, s], return_final_state=True, impl="reference")[1]
                  for s in cuts]
    decays = [(dt[:, s] * A).sum(1) for s in cuts]
    h = h0
    for rank, s in enumerate(cuts):
        assert_close(incoming_state(torch.stack(zero_start), torch.stack(decays), rank, h0), h, name=f"h_in {rank}")
        h = ssd(x[:, s], dt[:, s], A, B[:, s], C[:, s], initial_state=h, return_final_state=True,
                impl="reference")[1]
