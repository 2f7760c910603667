"""Prompts and the text encoder: placeholder tokens, prompt templates, prompt embeddings."""

from __future__ import annotations

import re

import torch

from augment.errors import UserError


def format_prompt(template: str, token: str, name: str) -> str:
    """Fill a template such as "A photo of {token} {name}"; an empty token (the plain baseline) leaves no gap."""
    return re.sub(r"\s+", " ", template.format(token=token, name=name)).strip()


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
