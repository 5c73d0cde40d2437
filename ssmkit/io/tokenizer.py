"""Tokenizers with one minimal interface: encode(str) -> list[int], decode(list[int]) -> str, vocab_size,
eos_token_id, bos_token_id.

`ByteTokenizer` (256 byte ids plus optional special tokens) is built in for models trained here; `load_tokenizer`
reads a checkpoint folder's tokenizer.json through the `tokenizers` library, or a saved ByteTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

BYTE_TOKENIZER_FILE = "ssmkit_tokenizer.json"


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes; special tokens get ids 256, 257, ... in the order given."""

    def __init__(self, specials: tuple[str, ...] = ("<eos>",), eos_token: str | None = "<eos>",
                 bos_token: str | None = None):
        self.specials = tuple(specials)
        self.special_ids = {tok: 256 + i for i, tok in enumerate(self.specials)}
        for name, tok in (("eos_token", eos_token), ("bos_token", bos_token)):
            if tok is not None and tok not in self.special_ids:
                raise ValueError(f"{name}: expected one of the specials {list(self.specials)}, got {tok!r}")
        self.eos_token_id = None if eos_token is None else self.special_ids[eos_token]
        self.bos_token_id = None if bos_token is None else self.special_ids[bos_token]
        self._eos, self._bos = eos_token, bos_token

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text` (special-token strings inside the text are encoded as plain bytes)."""
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids -> text; invalid UTF-8 sequences become U+FFFD; special ids are dropped or written out."""
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            if not 256 <= i < self.vocab_size:
                raise ValueError(f"ids: expected ids in [0, {self.vocab_size}), got {i}")
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(self.specials[i - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, path) -> None:
        """Writes ssmkit_tokenizer.json into the folder `path` (read back by `load_tokenizer`)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        spec = {"type": "byte", "specials": list(self.specials), "eos_token": self._eos, "bos_token": self._bos}
        (Path(path) / BYTE_TOKENIZER_FILE).write_text(json.dumps(spec, indent=2) + "\n")


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the common interface; eos/bos come from tokenizer_config.json or
    config.json when the folder has them."""

    def __init__(self, tokenizer, eos_token_id: int | None = None, bos_token_id: int | None = None):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load_tokenizer(path):
    """The tokenizer of a checkpoint folder (or a tokenizer.json file): an HFTokenizer for tokenizer.json, a
    ByteTokenizer for ssmkit_tokenizer.json. Raises FileNotFoundError when the folder has neither."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    tokenizer_json = path if path.is_file() else path / "tokenizer.json"
    if tokenizer_json.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
        return HFTokenizer(tok, *_special_ids(folder, tok))
    byte_spec = folder / BYTE_TOKENIZER_FILE
    if byte_spec.is_file():
        spec = json.loads(byte_spec.read_text())
        return ByteTokenizer(tuple(spec["specials"]), spec.get("eos_token"), spec.get("bos_token"))
    raise FileNotFoundError(f"path: expected tokenizer.json or {BYTE_TOKENIZER_FILE} in {folder}")


def _special_ids(folder: Path, tok) -> tuple[int | None, int | None]:
    """(eos, bos) ids: tokens named in tokenizer_config.json, else the ids in config.json."""
    ids = {}
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        spec = json.loads(tc.read_text())
        for key in ("eos_token", "bos_token"):
            token = spec.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and tok.token_to_id(token) is not None:
                ids[key] = tok.token_to_id(token)
    cfg = folder / "config.json"
    if cfg.is_file():
        spec = json.loads(cfg.read_text())
        for key in ("eos_token", "bos_token"):
            value = spec.get(f"{key}_id")
            value = value[0] if isinstance(value, list) and value else value
            if key not in ids and isinstance(value, int):
                ids[key] = value
    return ids.get("eos_token"), ids.get("bos_token")
