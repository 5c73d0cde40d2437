"""`ssmkit generate CHECKPOINT --prompt ...`: load a checkpoint folder and its tokenizer, stream a completion.

The text goes to stdout as it is produced (the prompt first); a one-line summary (tokens, seconds, tokens/s) goes
to stderr. The CLI only parses arguments and calls `generate_command`.
"""

from __future__ import annotations

import sys
import time

import torch

from .generate import generate_steps

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
KV_DTYPES = {"int8": torch.int8, **DTYPES}


def generate_command(checkpoint: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                     dtype: str | None = None, device: str | None = None, tokenizer: str | None = None,
                     prefill_chunk_size: int | None = None, kv_dtype: str | None = None,
                     out=None, err=None) -> int:
    """Generates a completion of `prompt` and writes it to `out` (stdout); returns the exit code 0.

    Args:
        checkpoint: a folder with config.json and safetensors weights (ssmkit.io.load_pretrained).
        tokenizer: None = the checkpoint's (tokenizer.json or ssmkit_tokenizer.json), "byte" = the built-in
            byte tokenizer, or another folder / tokenizer.json path.
        dtype: "float32" | "float64" | "bfloat16" | "float16" (None = as stored). device: e.g. "cpu", "cuda".
        kv_dtype: "int8" (quantized KV cache of attention layers) or a float dtype name; None = dtype.
        The other arguments are those of ssmkit.inference.generate.generate.
    Raises ValueError / FileNotFoundError with a message for the user (bad arguments, missing files).
    """
    from ssmkit.io import ByteTokenizer, load_pretrained, load_tokenizer

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    torch_dtype = _lookup("dtype", dtype, DTYPES)
    torch_kv_dtype = _lookup("kv_dtype", kv_dtype, KV_DTYPES)
    model = load_pretrained(checkpoint, dtype=torch_dtype, device=device)
    if tokenizer == "byte":
        # A 256-token model has no id for the byte tokenizer's <eos>: then it runs without one.
        tok = ByteTokenizer() if model.config.vocab_size > 256 else ByteTokenizer(specials=(), eos_token=None)
    else:
        tok = load_tokenizer(checkpoint if tokenizer is None else tokenizer)
    ids = tok.encode(prompt)
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    if not ids:
        raise ValueError("prompt: expected a non-empty prompt, got an empty string")
    input_ids = torch.tensor([ids], dtype=torch.int64, device=model.embeddings.weight.device)
    start = time.perf_counter()
    # Stop at the tokenizer's eos token; without one, generate falls back to the model config's eos_token_id.
    steps = generate_steps(model, input_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed, eos_token_id=tok.eos_token_id,
                           prefill_chunk_size=prefill_chunk_size, kv_dtype=torch_kv_dtype)
    out.write(prompt)
    out.flush()
    new, shown, n_steps, first = [], "", 0, start
    for step in steps:
        n_steps += 1
        if n_steps == 1:
            first = time.perf_counter()  # prefill and the first token: time to first token
        if bool(step.finished[0]):
            break  # the stop token itself is not printed
        new.append(int(step.tokens[0]))
        shown = _write_new_text(out, tok.decode(new), shown)
    _write_new_text(out, tok.decode(new), shown, final=True)
    out.write("\n")
    end = time.perf_counter()
    rate = f", decode {(n_steps - 1) / (end - first):.1f} tokens/s" if n_steps > 1 else ""
    err.write(f"{len(ids)} prompt tokens, {n_steps} new tokens in {end - start:.2f} s "
              f"(first token after {first - start:.2f} s{rate})\n")
    return 0


def _write_new_text(out, text: str, shown: str, final: bool = False) -> str:
    """Writes the part of `text` (the decoded new tokens so far) past the `shown` characters, as transformers'
    TextStreamer does (decoding is assumed prefix-stable); holds back a trailing U+FFFD, an incomplete UTF-8
    sequence the next byte token may complete, unless final. Returns what has been written so far."""
    if not final:
        text = text.rstrip("\ufffd")
    if len(text) > len(shown):
        out.write(text[len(shown):])
        out.flush()
        return text
    return shown


def _lookup(name: str, value: str | None, table: dict):
    if value is None:
        return None
    if value not in table:
        raise ValueError(f"{name}: expected one of {list(table)}, got {value!r}")
    return table[value]
