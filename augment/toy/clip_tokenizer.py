"""The real SD-1.x CLIP BPE tokenizer, rebuilt offline from the vocabulary in the open-clip-torch wheel."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Write vocab.json + merges.txt (+ configs) of the 49,408-token SD-1.x tokenizer into out_dir."""
    try:
        bpe = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    except ModuleNotFoundError:
        from augment.errors import UserError

        raise UserError("the SD-1.x tokenizer rebuild needs open-clip-torch: pip install 'augment[toy]'") from None
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "do_lower_case": True,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    return out


def clip_tokenizer(cache_dir: str | Path):
    """A transformers CLIPTokenizer for SD 1.x, built in cache_dir if not there yet."""
    from transformers import CLIPTokenizer

    cache_dir = Path(cache_dir)
    if not (cache_dir / "merges.txt").exists():
        write_clip_tokenizer_files(cache_dir)
    return CLIPTokenizer.from_pretrained(str(cache_dir))
