"""The official `openai` Python client as a real client of the server: completions (streamed and not) and chat
equal `generate`, routing features go through extra_body, models are listed, and errors surface as the client's
typed exceptions carrying the field name."""

from __future__ import annotations

import openai
import pytest

from tests.serve.harness import reference, serving

PROMPT = "Hello from openai "


@pytest.fixture(scope="module")
def client(checkpoints, policy_file):
    with serving(checkpoints, policy=policy_file) as (url, _):
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            yield c


def test_completion_and_streamed_completion_equal_generate(client, checkpoints):
    done = client.completions.create(model="mamba2", prompt=PROMPT, max_tokens=16, temperature=0.6, seed=5)
    text, ids = reference(checkpoints["mamba2"], PROMPT, 16, 0.6, None, 5)
    assert done.choices[0].text == text and done.usage.completion_tokens == len(ids)
    stream = client.completions.create(model="mamba2", prompt=PROMPT, max_tokens=16, temperature=0.6, seed=5,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_auto_routing_with_features_in_extra_body(client):
    done = client.completions.create(model="auto", prompt="x" * 30, max_tokens=2,
                                     extra_body={"requires_icl": True, "task": "qa"})
    assert done.model == "llama"
    assert done.model_extra["routing"]["rule"] == "in-context-learning"
    raw = client.completions.with_raw_response.create(model="auto", prompt="hi", max_tokens=1)
    assert '"backend": "llama"' in raw.headers["x-ssmkit-routing"]


def test_chat_completion_streamed_and_not(client, checkpoints):
    messages = [{"role": "user", "content": "Hi"}]
    done = client.chat.completions.create(model="llama", messages=messages, max_tokens=8, temperature=0)
    text, _ = reference(checkpoints["llama"], "<user>Hi\n<assistant>", 8)
    assert done.choices[0].message.content == text and done.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="llama", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_models_are_listed_and_errors_are_typed(client):
    assert [m.id for m in client.models.list()] == ["llama", "mamba2", "hybrid"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="llama", prompt="hi", max_tokens=2, temperature=3.0)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as no_template:
        client.chat.completions.create(model="mamba2", messages=[{"role": "user", "content": "Hi"}])
    assert "no chat template" in no_template.value.message
