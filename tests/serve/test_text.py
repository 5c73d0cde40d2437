"""Text around the token stream: stop strings cut at their first occurrence however the text arrives in pieces
(compared with cutting the whole text at once), split UTF-8 characters are held back until complete, and chat
templates render in a sandbox with errors reported against `messages`."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssmkit.io import ByteTokenizer
from ssmkit.serve.text import ChatTemplate, IncrementalText, StopMatcher, load_chat_template


def _cut_at_once(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="abc\u00e9", max_size=30), stops=st.lists(st.text(alphabet="abc", min_size=1,
                                                                                    max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=6))
@example(text="baa", stops=["a", "baa"], cuts=[2])  # a longer stop starting earlier completes in the next piece
def test_stop_matcher_fed_in_pieces_equals_cutting_the_whole_text(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    matcher, out, stopped = StopMatcher(stops), "", False
    for a, b in zip(bounds, bounds[1:]):
        piece, stopped = matcher.feed(text[a:b], final=b == len(text))
        out += piece
        if stopped:
            break
    if len(bounds) == 1:  # empty text: one final feed
        piece, stopped = matcher.feed("", final=True)
        out += piece
    assert (out, stopped) == _cut_at_once(text, stops)


def test_stop_matcher_holds_back_a_possible_stop_prefix():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("N") == ("", False)
    assert m.feed("x") == ("ENx", False)
    assert m.feed("yEND tail") == ("y", True)


def test_incremental_text_holds_back_a_split_utf8_character():
    inc = IncrementalText(ByteTokenizer())
    ids = list("né".encode("utf-8"))  # n, then two bytes of é
    assert inc.feed(ids[:1]) == "n"
    assert inc.feed(ids[:2]) == ""  # half a character
    assert inc.feed(ids) == "é"
    assert inc.feed(ids + [0xFF], final=True) == "\ufffd"  # an invalid byte shows once the stream ends


def test_chat_template_renders_and_reports_rejections(tmp_path):
    source = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
              "[{{ m['role'] }}] {{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": source}))
    template = load_chat_template(tmp_path)
    assert template.render([{"role": "user", "content": "hi"}]) == "[user] hi[assistant]"
    with pytest.raises(ValueError, match="messages: .*no system"):
        template.render([{"role": "system", "content": "x"}])
    assert load_chat_template(tmp_path / "missing") is None


def test_chat_template_sandbox_refuses_unsafe_attribute_access():
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="messages"):
        template.render([{"role": "user", "content": "x"}])
