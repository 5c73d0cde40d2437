"""What the server tests share: tiny checkpoints (ModelConfig presets with perturbed weights, saved with
save_pretrained and a ByteTokenizer: 256 bytes + <eos> = 257 ids), a policy file, a server on a free loopback port
in a thread, and the reference completion from `ssmkit.inference.generate` on the same checkpoint."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ssmkit.inference import generate
from ssmkit.io import ByteTokenizer, load_pretrained, save_pretrained
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.route import Router, RulePolicy, default_policy, dump_policy, load_policy
from ssmkit.serve import LocalBackend, RemoteBackend, ServerThread, Service

EOS = 256
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_model(preset: str, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.from_name(preset, vocab_size=257))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.lm_head.weight.mul_(10.0)
    return model.eval()


def make_checkpoint(folder: Path, preset: str, seed: int = 0, chat_template: str | None = None) -> Path:
    """Saves tiny_model(preset, seed) and a ByteTokenizer into folder; with chat_template, a tokenizer_config.json
    that ships it."""
    save_pretrained(tiny_model(preset, seed), folder)
    ByteTokenizer().save(folder)
    if chat_template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_template}))
    return folder


def write_policy(path: Path, roles: dict) -> Path:
    """The default rule table (issue 8) with its roles played by the given backend names."""
    dump_policy(RulePolicy(rules=default_policy().rules, roles=roles, description="test"), path)
    return path


_MODELS: dict = {}


def reference(checkpoint: Path, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float | None = None,
              seed: int | None = None, eos: bool = True) -> tuple[str, list[int]]:
    """(text, new token ids) that `generate` gives for the prompt on the checkpoint, stopping at <eos> (never
    with eos=False)."""
    key = str(checkpoint)
    if key not in _MODELS:
        _MODELS[key] = load_pretrained(checkpoint)
    ids = torch.tensor([list(prompt.encode("utf-8"))])
    out = generate(_MODELS[key], ids, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                   eos_token_id=EOS if eos else [])
    new = out[0, ids.shape[1]:].tolist()
    return ByteTokenizer().decode(new), new


def start_server(models: dict, *, policy: Path | None = None, remote: dict | None = None, max_concurrency: int = 4,
                 max_queue: int = 4, max_context: int = 512, timeout_s: float = 60.0, grace_s: float = 5.0,
                 router_db=":memory:", router_config=None) -> ServerThread:
    """A started server on 127.0.0.1:<free port> in a thread (its .url, .service; .stop() shuts it down).
    models: {name: folder}; remote: {name: "http://host:port#model"}; router_config: for the router (policy given).
    """
    local = {name: LocalBackend(name, path, max_concurrency=max_concurrency, max_queue=max_queue,
                                max_context=max_context) for name, path in models.items()}
    far = {}
    for name, spec in (remote or {}).items():
        url, _, model = spec.partition("#")
        far[name] = RemoteBackend(name, url, model or None, timeout_s=timeout_s)
    router = Router(load_policy(policy), router_db, router_config) if policy is not None else None
    thread = ServerThread(Service(local, far, router, timeout_s=timeout_s), grace_s=grace_s)
    thread.start()
    return thread


@contextmanager
def serving(models: dict, **kwargs):
    """start_server as a context: yields (base url, Service) and shuts the server down after."""
    thread = start_server(models, **kwargs)
    try:
        yield thread.url, thread.service
    finally:
        thread.stop()


def sse_events(lines) -> list:
    """The JSON payloads of an SSE stream's `data:` lines, up to [DONE] (which must come)."""
    events = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        if payload == "[DONE]":
            return events
        events.append(json.loads(payload))
    raise AssertionError(f"the stream ended without data: [DONE] after {len(events)} events")
