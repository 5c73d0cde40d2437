"""Tokenizer comparison: how many tokens two tokenizers need for the same text, and what that shifts.

Token counts set per-token cost, what fits in a context window and how a prompt's token budget is laid out, so a
model swap that changes the tokenizer changes all three even when the model is as fast per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssmkit.io.tokenizer import ByteTokenizer, load_tokenizer

from .table import fmt_number, markdown_table

N_FIRST = 20


def load_tokenizer_spec(spec: str):
    """'byte' -> the built-in ByteTokenizer; otherwise a tokenizer.json file or a folder holding one (or a saved
    ByteTokenizer), through ssmkit.io.tokenizer.load_tokenizer."""
    return ByteTokenizer() if spec == "byte" else load_tokenizer(spec)


def token_pieces(tokenizer, text: str, n: int = N_FIRST) -> list[tuple[int, str]]:
    """The first n tokens of `text` as (id, piece): the text each token adds to the decoded prefix.

    Tokens that split a character (byte-level BPE does) are marked: '~' before a piece means the token began
    inside a character an earlier token started; a lone '~' is a token holding only part of a character.
    A ByteTokenizer shows printable ASCII bytes as themselves and other bytes as <0xNN>.
    """
    ids = tokenizer.encode(text)[:n]
    if isinstance(tokenizer, ByteTokenizer):
        return [(i, chr(i) if 0x20 <= i < 0x7F else f"<0x{i:02X}>") for i in ids]
    out, shown, pending = [], "", False
    for k, tid in enumerate(ids):
        decoded = tokenizer.decode(ids[:k + 1])
        stable = decoded.rstrip("\ufffd")  # an incomplete UTF-8 sequence decodes to U+FFFD until completed
        if not stable.startswith(shown):  # a decoder that rewrites earlier text: show the token on its own
            out.append((tid, tokenizer.decode([tid])))
            shown, pending = stable, False
            continue
        new = stable[len(shown):]
        out.append((tid, ("~" if pending or not new else "") + new))
        shown, pending = stable, len(decoded) > len(stable)
    return out


@dataclass
class TextTokens:
    """One text (a file) under tokenizers A and B."""

    name: str
    characters: int
    tokens_a: int
    tokens_b: int
    first_a: list[tuple[int, str]]
    first_b: list[tuple[int, str]]

    @property
    def ratio(self) -> float:
        """tokens_b / tokens_a (NaN for an empty text)."""
        return self.tokens_b / self.tokens_a if self.tokens_a else float("nan")

    @property
    def cost_impact_pct(self) -> float:
        """Change in per-token cost of this text when moving from A to B: (ratio - 1) * 100."""
        return (self.ratio - 1) * 100


def compare_tokenizers(tokenizer_a, tokenizer_b, texts: dict[str, str], n_first: int = N_FIRST) -> list[TextTokens]:
    """Counts tokens of each text under A and B. Tokenizers: anything with encode(str) -> list[int] and
    decode(list[int]) -> str. Returns one TextTokens per text, then a 'total' row when there are several."""
    rows = [TextTokens(name, len(text), len(tokenizer_a.encode(text)), len(tokenizer_b.encode(text)),
                       token_pieces(tokenizer_a, text, n_first), token_pieces(tokenizer_b, text, n_first))
            for name, text in texts.items()]
    if len(rows) > 1:
        rows.append(TextTokens("total", sum(r.characters for r in rows), sum(r.tokens_a for r in rows),
                               sum(r.tokens_b for r in rows), [], []))
    return rows


def read_texts(paths) -> dict[str, str]:
    """{path: text} of UTF-8 files; a file that is not UTF-8 raises ValueError naming it."""
    texts = {}
    for p in paths:
        try:
            texts[str(p)] = Path(p).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return texts


def format_token_comparison(rows: list[TextTokens], name_a: str, name_b: str, context_tokens: int = 4096) -> str:
    """A table (characters, tokens, chars/token, ratio, cost impact), the first tokens of each text under each
    tokenizer, and what the difference shifts: cost estimates, length limits and prompt layout."""
    table = markdown_table(
        ["text", "characters", "tokens A", "tokens B", "chars/token A", "chars/token B", "B/A", "cost impact"],
        [[r.name, r.characters, r.tokens_a, r.tokens_b, fmt_number(_per(r.characters, r.tokens_a)),
          fmt_number(_per(r.characters, r.tokens_b)), "n/a" if r.ratio != r.ratio else f"{r.ratio:.3f}x", _pct(r.cost_impact_pct)]
         for r in rows])
    lines = [f"A: {name_a}", f"B: {name_b}", "", table, ""]
    for r in rows:
        if r.name == "total":
            continue
        lines.append(f"first {len(r.first_a)} tokens of {r.name} ('~': a character split across tokens)")
        for label, first in (("A", r.first_a), ("B", r.first_b)):
            lines.append(f"  {label}: " + " ".join(f"[{piece!r}]" for _, piece in first))
    lines += ["", *explain(rows[-1], context_tokens)]
    return "\n".join(lines)


def explain(total: TextTokens, context_tokens: int = 4096) -> list[str]:
    """Plain sentences on what B's token count shifts relative to A's, with numbers from `total`."""
    if not total.tokens_a or not total.tokens_b:
        return ["One of the tokenizers produced no tokens (empty text): nothing to compare."]
    pct = total.cost_impact_pct
    more = "more" if pct > 0 else "fewer"
    if total.tokens_a == total.tokens_b:
        return [f"A and B need the same number of tokens for this text ({total.tokens_a}): cost estimates, length "
                "limits and prompt layouts carry over unchanged (check other scripts and languages too)."]
    chars_a = context_tokens * total.characters / total.tokens_a
    chars_b = context_tokens * total.characters / total.tokens_b
    return [
        f"B needs {abs(pct):.1f}% {more} tokens than A for the same text ({total.tokens_b} vs {total.tokens_a}).",
        f"- cost: per-token prices and token-based capacity plans shift by {_pct(pct)} for this text when moving "
        f"from A to B.",
        f"- length limits: a {context_tokens}-token window holds about {chars_a:.0f} characters with A and "
        f"{chars_b:.0f} with B; a prompt that fits one limit may be cut off or rejected under the other.",
        f"- prompt layout: budgets in tokens (system prompt, retrieved context, room for the answer) must be "
        f"re-derived with B's counts, and the same max_new_tokens yields about {100 / total.ratio:.0f}% as much text with B.",
        "- scripts differ: compare the per-file ratios; non-Latin text (Korean, Chinese) often shifts much more than "
        "English.",
    ]


def _per(chars: int, tokens: int) -> float:
    return chars / tokens if tokens else float("nan")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:+.1f}%"
