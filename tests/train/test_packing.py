"""Packed rows: cu_seqlens from segment ids, and a packed forward that equals running each document alone."""

import pytest
import torch

from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.train.packing import cu_seqlens_from_segments, packed_forward
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
    model = LanguageModel(ModelConfig(**SMALL, mixers=mixers, feed_forwards=ffs)).eval()
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2], [2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]])
    ids = torch.randint(0, 40, seg.shape)
    cu = cu_seqlens_from_segments(seg)
    with torch.no_grad():
        got = packed_forward(model, ids, cu).reshape(-1, 40)
        flat = ids.reshape(-1)
        want = torch.cat([model(flat[a:b][None])[0] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert_close(got, want, name=f"packed logits {mixers}")


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
