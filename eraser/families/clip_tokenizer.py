"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip ships in its wheel.

Stable Diffusion v1/v2/XL and OpenAI/OpenCLIP text towers all use this tokenizer (49,408 tokens,
77 positions). Building it locally means no hub download is needed for small or random models.
"""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import shutil
import tempfile
from pathlib import Path

__all__ = ["clip_tokenizer", "write_clip_tokenizer_files"]

_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-unicode table, which CLIP's BPE vocabulary is written in.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the transformers CLIPTokenizer format) into ``directory``."""
    import open_clip

    bpe = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [_SOT, _EOT]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


@functools.lru_cache(maxsize=1)
def _process_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="eraser-clip-tokenizer-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return write_clip_tokenizer_files(d)


def clip_tokenizer(directory: str | Path | None = None, pad_token: str = _EOT, max_length: int = 77):
    """A transformers ``CLIPTokenizer`` equal to OpenAI CLIP's (``pad_token="!"`` gives SDXL's second one).

    ``directory`` keeps the vocabulary files (when omitted: one temporary folder per process,
    removed at exit).
    """
    from transformers import CLIPTokenizer

    d = Path(directory) if directory is not None else _process_dir()
    if not (d / "vocab.json").is_file() or not (d / "merges.txt").is_file():
        write_clip_tokenizer_files(d)
    # from_pretrained on the local folder reads the two files in every transformers version.
    return CLIPTokenizer.from_pretrained(str(d), pad_token=pad_token, model_max_length=max_length)
