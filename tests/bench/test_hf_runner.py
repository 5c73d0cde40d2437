"""The transformers side of the GPU comparison, on CPU: the twin has ssmkit's weights (same logits and greedy
tokens), its streamer clock feeds the same timing fields, and a family transformers lacks gets no twin."""

import pytest
import torch

from ssmkit.bench.hf_runner import TransformersBenchmarker, load_transformers_twin, transformers_family
from ssmkit.bench.runner import Benchmarker
from ssmkit.io import ByteTokenizer
from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close

pytest.importorskip("transformers")


@pytest.mark.parametrize("name,family", [("tiny-mamba2", "mamba2"), ("tiny-llama", "llama")])
def test_transformers_twin_has_the_same_logits_tokens_and_timing_fields(tmp_path, name, family):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.from_name(name)).eval()
    hf = load_transformers_twin(model, tmp_path)
    ours = Benchmarker(model, ByteTokenizer(), "ssmkit", quality=False)
    theirs = TransformersBenchmarker(hf, model.config, ByteTokenizer(), "transformers", batching="static",
                                     max_batch=2)
    ids = ours.filler_ids(40)
    with torch.no_grad():
        assert_close(hf(torch.tensor([ids])).logits, model(torch.tensor([ids])))
    assert transformers_family(model.config) == family
    assert theirs.greedy_tokens(ids, 6) == ours.greedy_tokens(ids, 6)
    t = theirs.generate_once(ids, 5, batch=2)
    assert t.start <= t.first <= t.end and len(t.per_token_ms) == 4
    try:
        run = theirs.run_suite([20, 30], max_new_tokens=3, warmup=0, repeats=1, concurrency=2,
                               environment={"device": "cpu", "versions": {}, "date": "d", "command": "c"})
    finally:
        theirs.close()
    assert run.failed_requests == 0 and [r.output_tokens for r in run.requests] == [3, 3]
    assert run.quality_score is None


def test_a_pattern_no_transformers_family_computes_gets_no_twin(tmp_path):
    model = LanguageModel(ModelConfig.from_name("tiny-hybrid-moe"))
    assert transformers_family(model.config) is None and load_transformers_twin(model, tmp_path) is None
