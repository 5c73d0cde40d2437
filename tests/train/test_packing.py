"""Packed rows: cu_seqlens from segment ids, and a packed forward that equals running each document alone."""

import pytest
import torch

from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.train.packing import cu_seqlens_from_segments, model_logits, packed_forward
from tests.compare import assert_close

SMALL = dict(vocab_size=40, d_model=32, n_layers=2, mamba_d_state=8, mamba2_d_state=8, mamba2_headdim=16,
             mamba2_chunk_size=8, n_heads=2, d_ff=64, n_experts=4, moe_top_k=2, s4_d_state=8)


def test_cu_seqlens_break_at_segment_changes_and_row_ends():
    seg = torch.tensor([[3, 3, 4, 4, 4], [4, 4, 5, 6, 6]])
    assert cu_seqlens_from_segments(seg).tolist() == [0, 2, 5, 7, 8, 10]
    assert cu_seqlens_from_segments(torch.zeros(1, 1, dtype=torch.long)).tolist() == [0, 1]


@pytest.mark.parametrize("mixers,ffs", [("mamba2", None), ("mamba", None), ("attention", "mlp"),
                                        (["mamba2", "attention"], ["mlp", "moe"]), ("s4", "mlp")])
def test_packed_forward_equals_each_document_run_alone(mixers, ffs):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(**SMALL, mixers=mixers, feed_forwards=ffs)).to(torch.float64).eval()
    # Documents cross rows (segment 2) and chunk boundaries (chunk 8), and one is a single token (segment 3).
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2], [2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]])
    ids = torch.randint(0, 40, seg.shape)
    cu = cu_seqlens_from_segments(seg)
    with torch.no_grad():
        got = model_logits(model, ids, seg)
        flat = ids.reshape(-1)
        want = torch.cat([model(flat[a:b][None])[0] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert got.shape == (2, 12, 40)
    assert_close(got.reshape(-1, 40), want, name=f"packed logits {mixers}")


class TakesCuSeqlens(torch.nn.Module):
    """A model whose forward accepts cu_seqlens: records what it was given."""

    def forward(self, input_ids, cu_seqlens=None):
        self.seen = (tuple(input_ids.shape), cu_seqlens.tolist())
        return torch.zeros(*input_ids.shape, 3)


def test_models_that_take_cu_seqlens_get_the_packed_row_directly():
    model = TakesCuSeqlens()
    seg = torch.tensor([[0, 0, 1], [1, 1, 1]])
    out = packed_forward(model, torch.zeros(2, 3, dtype=torch.long), cu_seqlens_from_segments(seg))
    assert out.shape == (2, 3, 3)
    assert model.seen == ((1, 6), [0, 2, 3, 6])


def test_a_model_without_cu_seqlens_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="^model: expected a forward that takes cu_seqlens.*got Linear"):
        packed_forward(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), torch.tensor([0, 3]))
