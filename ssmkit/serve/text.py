"""Text around the token stream: incremental detokenization, stop strings, and chat templates.

Byte-level tokens can split a UTF-8 character; a trailing U+FFFD is held back until the next token completes it.
Stop strings are matched on the text, holding back any tail that could still become one. Chat templates are the
Jinja templates Hugging Face checkpoints ship (tokenizer_config.json "chat_template" or chat_template.jinja).
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class IncrementalText:
    """Token ids in, new text out: feed(token_ids_so_far) -> the text not returned before."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.shown = ""

    def feed(self, ids: list[int], final: bool = False) -> str:
        text = self.tokenizer.decode(ids)
        if not final:
            text = text.rstrip("\ufffd")
        if text.startswith(self.shown) and len(text) > len(self.shown):
            new, self.shown = text[len(self.shown):], text
            return new
        return ""


class StopMatcher:
    """Cuts the text at the first stop string: feed(new_text) -> (text safe to send, stopped).

    Text that ends with a proper prefix of a stop string is held back until it is known not to start one, and a
    stop found after such a tail's start is not final yet: a longer stop starting earlier may still complete
    (stops "a" and "baa", text "ba" then "a": the cut is at 0, not at 1).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops or () if s]
        self.text = ""
        self.sent = 0

    def feed(self, new: str, final: bool = False) -> tuple[str, bool]:
        self.text += new
        pending = len(self.text) - (0 if final else self._held_back())  # where a stop may still begin
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits and min(hits) <= pending:
            cut = min(hits)
            out, self.sent = self.text[self.sent:cut], max(self.sent, cut)
            return out, True
        end = max(self.sent, pending)
        out, self.sent = self.text[self.sent:end], end
        return out, False

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


class ChatTemplate:
    """A Jinja chat template rendered in a sandbox: render(messages) -> the prompt text."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict]) -> str:
        """messages: [{"role", "content"}]; raises ValueError when the template rejects them."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                        eos_token=self.eos_token)
        except (jinja2.TemplateError, TypeError, ValueError) as err:
            raise ValueError(f"messages: the model's chat template rejected them: {err}") from None


def load_chat_template(folder) -> ChatTemplate | None:
    """The chat template a checkpoint folder ships, or None: chat_template.jinja, else tokenizer_config.json's
    "chat_template" (a string, or a list of {"name", "template"} of which "default" is used)."""
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    source = jinja_file.read_text() if jinja_file.is_file() else config.get("chat_template")
    if isinstance(source, list):
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))


def _token_text(token) -> str:
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


def _raise(message):
    raise jinja2.TemplateError(message)
