"""logits_to_keep computes only the last positions' logits, equal to the same rows of the full forward."""

import torch

from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close


def test_logits_to_keep_equals_the_last_rows_of_the_full_forward():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name("tiny-hybrid-moe")).double().eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    full = model(ids)
    last = model(ids, logits_to_keep=3)
    assert last.shape == (2, 3, model.config.vocab_size)
    assert_close(last, full[:, -3:])
