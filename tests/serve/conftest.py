import pytest

from tests.serve.harness import CHAT_TEMPLATE, make_checkpoint, write_policy


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{name: folder}: a Transformer++ with a chat template, a Mamba-2 and a Mamba-2/attention/MoE hybrid."""
    root = tmp_path_factory.mktemp("serve-checkpoints")
    return {"llama": make_checkpoint(root / "llama", "tiny-llama", seed=0, chat_template=CHAT_TEMPLATE),
            "mamba2": make_checkpoint(root / "mamba2", "tiny-mamba2", seed=1),
            "hybrid": make_checkpoint(root / "hybrid", "tiny-hybrid-moe", seed=2)}


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory):
    """The default rule table with transformer -> llama, mamba -> mamba2, hybrid -> hybrid."""
    path = tmp_path_factory.mktemp("serve-policy") / "policy.yaml"
    return write_policy(path, {"transformer": "llama", "mamba": "mamba2", "hybrid": "hybrid"})
