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


def text_pairs(pipe) -> list[tuple]:
    """The generator's (tokenizer, text encoder) pairs: one for SD-1.x/2.x; two for SDXL (CLIP ViT-L, then
    OpenCLIP ViT-bigG with its projection), whose hidden states are concatenated and whose second gives the
    pooled embedding (diffusers' StableDiffusionXLPipeline.encode_prompt)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def token_parts(pipe) -> dict[str, int] | None:
    """How a class token's vector splits over the text encoders: None for one encoder (the whole vector is its
    row); for SDXL {"clip_l": 768, "clip_g": 1280} (the names of diffusers' SDXL textual-inversion files), the
    vector being the two rows end to end."""
    pairs = text_pairs(pipe)
    if len(pairs) == 1:
        return None
    return {name: te.get_input_embeddings().embedding_dim for name, (_, te) in zip(("clip_l", "clip_g"), pairs)}


def add_placeholder_tokens(pipe, tokens: list[str], init_words: list[str]) -> tuple[list[int], list[torch.Tensor]]:
    """Add new tokens to the tokenizer(s) and embedding table(s), each row initialised from its word's embedding
    (the mean of the word's sub-tokens when it has several). Returns the token ids and initial vectors (with two
    text encoders: both rows end to end, token_parts; the ids are the same in both tokenizers, which share one
    vocabulary in SDXL)."""
    token_ids, parts = None, []
    for tokenizer, text_encoder in text_pairs(pipe):
        word_ids = []
        for word in init_words:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if not ids:
                raise UserError(f"init word {word!r} gives no tokens")
            word_ids.append(ids)
        tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
        weight = text_encoder.get_input_embeddings().weight
        ids_here = tokenizer.convert_tokens_to_ids(tokens)
        if token_ids is not None and ids_here != token_ids:
            raise UserError("the generator's two tokenizers give the class tokens different ids (their vocabularies "
                            "differ); augment needs them to share one, as SDXL's do")  # fmt: skip
        token_ids = ids_here
        vectors = []
        with torch.no_grad():
            for tid, ids in zip(token_ids, word_ids):
                vec = weight[ids].float().mean(0)
                weight[tid] = vec.to(weight.dtype)
                vectors.append(vec)
        parts.append(vectors)
    return token_ids, [torch.cat(vs) for vs in zip(*parts)]


def set_token_rows(pipe, token_id: int, vector: torch.Tensor) -> None:
    """Write a learned vector into the embedding table(s) at `token_id` (split over the encoders as
    token_parts says)."""
    offset = 0
    with torch.no_grad():
        for _, text_encoder in text_pairs(pipe):
            weight = text_encoder.get_input_embeddings().weight
            weight[token_id] = vector[offset : offset + weight.shape[1]].to(weight.dtype)
            offset += weight.shape[1]


def is_sdxl(pipe) -> bool:
    """An SDXL-style generator: a UNet conditioned on the pooled text embedding and the size/crop time ids."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings as Stable Diffusion computes them (last hidden state, padded to max length).

    SDXL (two text encoders): each encoder's penultimate hidden state, concatenated, as diffusers'
    StableDiffusionXLPipeline.encode_prompt computes them; the pooled embedding of the second encoder travels as
    one more row at the end, zero-padded to the width, so the learner's one tensor carries both to
    `unet_forward`, which splits them again. SDXL base's text encoders say `eos_token_id: 2` (their hub
    configs), for which transformers' CLIP pools at the highest token id: an added class token's position, not
    the end of the prompt; diffusers' pipeline reads the same, so learning and generation agree."""
    pairs = text_pairs(pipe)
    if len(pairs) == 1:
        return pairs[0][1](_ids(pairs[0][0], prompts, pairs[0][1].device))[0]
    hidden, pooled = [], None
    for tokenizer, text_encoder in pairs:
        out = text_encoder(_ids(tokenizer, prompts, text_encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds (the pooled, projected embedding)
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    embeds = torch.cat([h.to(hidden[-1].device) for h in hidden], dim=-1)
    if pooled is None:
        raise UserError("an SDXL generator needs a text encoder with a projection (text_encoder_2) for the pooled "
                        "embedding")  # fmt: skip
    if pooled.shape[-1] > embeds.shape[-1]:
        raise UserError(f"the pooled text embedding ({pooled.shape[-1]} wide) is wider than the prompt embedding "
                        f"({embeds.shape[-1]}): not an SDXL layout augment knows")  # fmt: skip
    row = torch.nn.functional.pad(pooled.to(embeds.dtype), (0, embeds.shape[-1] - pooled.shape[-1]))
    return torch.cat([embeds, row[:, None]], dim=1)


def encode_uncond(pipe) -> torch.Tensor:
    """The unconditional (empty prompt) embedding, shape [1, ...] as encode_prompts gives; SDXL with
    `force_zeros_for_empty_prompt` (SDXL base) uses zeros there, both the hidden states and the pooled row, as
    its pipeline does for an empty negative prompt."""
    cond = encode_prompts(pipe, [""])
    if is_sdxl(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return torch.zeros_like(cond)
    return cond


def unet_forward(pipe, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction for latents `x` at `t` under prompt embeddings `cond` (encode_prompts). SDXL: the
    pooled row split off, and the added time ids (original size, crop top-left, target size) set as diffusers'
    pipeline sets them by default: (H, W, 0, 0, H, W) of the image being made."""
    if not is_sdxl(pipe):
        return pipe.unet(x, t, encoder_hidden_states=cond).sample
    unet = pipe.unet
    proj = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
    embeds, pooled = cond[:, :-1], cond[:, -1, :proj]
    h, w = x.shape[-2] * pipe.vae_scale_factor, x.shape[-1] * pipe.vae_scale_factor
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.dtype, device=x.device).expand(len(x), -1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample


def _ids(tokenizer, prompts: list[str], device) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


class EmbeddingInjector:
    """Forward hooks on the token-embedding layer(s): positions holding a learned token's id get its vector
    (with two text encoders, each its part of the vector: token_parts)."""

    def __init__(self, pipe):
        self.vectors: dict[int, torch.Tensor] = {}
        self._handles, offset = [], 0
        for _, text_encoder in text_pairs(pipe):
            layer = text_encoder.get_input_embeddings()
            part = slice(offset, offset + layer.embedding_dim)
            self._handles.append(layer.register_forward_hook(lambda m, i, o, part=part: self._hook(i, o, part)))
            offset += layer.embedding_dim
        self.removed = False

    def _hook(self, inputs, output, part: slice):
        if not self.vectors:
            return output
        ids = inputs[0]
        for token_id, vec in self.vectors.items():
            mask = (ids == token_id).unsqueeze(-1)
            if mask.any():
                output = torch.where(mask, vec[part].to(output.dtype), output)
        return output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.removed = True
