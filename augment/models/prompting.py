"""Prompts and the text encoder: placeholder tokens, prompt templates, prompt embeddings."""

from __future__ import annotations

import re

import torch

from augment.errors import UserError


def format_prompt(template: str, token: str, name: str) -> str:
    """Fill a template such as "A photo of {token} {name}"; an empty token (the plain baseline) leaves no gap."""
    return re.sub(r"\s+", " ", template.format(token=token, name=name)).strip()


def prompt_cuts(tokenizer, templates: list[str], classes: list[tuple[str, str]]) -> dict[str, int]:
    """What the text encoder does not read: {class name: its longest prompt in tokens} for each class one of
    whose prompts is longer than `tokenizer.model_max_length` (77 for CLIP, BOS and EOS included), which the
    tokenizer cuts. `classes`: (token or "", name) pairs. A class token that a cut would drop is a UserError:
    it would be learned, or used, for nothing."""
    limit = tokenizer.model_max_length

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    cut: dict[str, int] = {}
    for token, name in classes:
        for template in templates:
            prompt = format_prompt(template, token, name)
            if token and token in prompt:  # the token counted as the one id it is once added
                before, _, after = prompt.partition(token)
                n_before = count(before)
                n = n_before + 1 + count(after)
                if n_before + 1 >= limit - 1:  # BOS, the words before it; EOS takes the last place
                    raise UserError(
                        f"class {name!r}: in {prompt[:80]!r}... the class token comes after {n_before} tokens, past "
                        f"the {limit} the text encoder reads; shorten the name or put {{token}} before {{name}}"
                    )
            else:
                n = count(prompt)
            if n + 2 > limit:
                cut[name] = max(cut.get(name, 0), n + 2)
    return cut


def cuts_note(cut: dict[str, int], limit: int) -> str | None:
    """One line for the user naming the classes whose prompts are cut (None when none is)."""
    if not cut:
        return None
    shown = ", ".join(f"{name[:40]!r} ({n} tokens)" for name, n in list(cut.items())[:3])
    more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
    return (f"{len(cut)} class(es) have prompts longer than the text encoder's {limit} tokens, cut there (the rest "
            f"is not read): {shown}{more}; recorded in the manifest as prompts_cut")  # fmt: skip


def add_placeholder_tokens(pipe, tokens: list[str], init_words: list[str]) -> tuple[list[int], list[torch.Tensor]]:
    """Add new tokens to the tokenizer and embedding table, each row initialised from its word's embedding
    (the mean of the word's sub-tokens when it has several). Returns the token ids and initial vectors."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    word_ids = []
    for word in init_words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise UserError(f"init word {word!r} gives no tokens")
        word_ids.append(ids)
    tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
    weight = text_encoder.get_input_embeddings().weight
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    vectors = []
    with torch.no_grad():
        for tid, ids in zip(token_ids, word_ids):
            vec = weight[ids].float().mean(0)
            weight[tid] = vec.to(weight.dtype)
            vectors.append(vec)
    return token_ids, vectors


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings as Stable Diffusion computes them (last hidden state, padded to max length)."""
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


class EmbeddingInjector:
    """Forward hook on the token-embedding layer: positions holding a learned token's id get its vector."""

    def __init__(self, text_encoder):
        self.layer = text_encoder.get_input_embeddings()
        self.vectors: dict[int, torch.Tensor] = {}
        self._handle = self.layer.register_forward_hook(self._hook)
        self.removed = False

    def _hook(self, module, inputs, output):
        if not self.vectors:
            return output
        ids = inputs[0]
        for token_id, vec in self.vectors.items():
            mask = (ids == token_id).unsqueeze(-1)
            if mask.any():
                output = torch.where(mask, vec.to(output.dtype), output)
        return output

    def remove(self) -> None:
        self._handle.remove()
        self.removed = True
