"""Many short prompts through a causal CLIP text tower, each shared prefix computed once.

Concept prompts are a template's prefix ("a photo of"), the concept's few tokens and the
end-of-text token. CLIP's text transformer is causal, so the prefix's states do not depend on
what follows: one pass over each distinct prefix, whose per-layer keys and values the suffixes
then attend to, gives every position exactly what the whole prompt would (up to rounding), at the
cost of the suffix tokens alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["is_causal_clip", "encode_with_shared_prefixes"]


def _transformer(encoder: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``encoder.layers`` and ``final_layer_norm`` (transformers
    nests it under ``text_model`` in some classes and versions)."""
    while hasattr(encoder, "text_model"):
        encoder = encoder.text_model
    return encoder


def is_causal_clip(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a transformers CLIP text tower (causal, the layout this module runs)."""
    tm = _transformer(encoder)
    return type(encoder).__name__.startswith("CLIPText") and all(
        hasattr(tm, n) for n in ("embeddings", "encoder", "final_layer_norm")
    )


def _layer(layer: nn.Module, x: Tensor, pos_keys: tuple[Tensor, Tensor] | None, mask: Tensor) -> tuple[Tensor, tuple]:
    """One CLIP encoder layer on ``x`` (B, T, D), attending also to ``pos_keys`` (keys, values of
    earlier positions, (B, H, P, hd)) under the boolean ``mask`` (B, 1, T, P + T); returns the
    output and this call's own keys and values."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.layer_norm1(x)
    heads = (b, t, attn.num_heads, attn.head_dim)
    q = attn.q_proj(h).view(heads).transpose(1, 2)
    k = attn.k_proj(h).view(heads).transpose(1, 2)
    v = attn.v_proj(h).view(heads).transpose(1, 2)
    keys, values = (k, v) if pos_keys is None else (torch.cat([pos_keys[0], k], 2), torch.cat([pos_keys[1], v], 2))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scale)
    x = x + attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))
    x = x + layer.mlp(layer.layer_norm2(x))
    return x, (k, v)


@torch.no_grad()
def encode_with_shared_prefixes(
    encoder: nn.Module, ids: Tensor, prefix_lengths: Sequence[int], *, penultimate: bool = False
) -> Tensor:
    """The tower's hidden states (B, L, D) for token ids (B, L) whose first ``prefix_lengths[b]``
    tokens (at least the start-of-text token) are shared with other rows: the last layer's, after
    the final layer norm, or with ``penultimate`` the layer before it (as ``hidden_states[-2]``).
    Equal to the tower's own forward pass up to rounding."""
    tm = _transformer(encoder)
    layers = list(tm.encoder.layers)
    if penultimate:
        layers = layers[:-1]
    param = next(encoder.parameters())
    ids = ids.to(param.device)
    b, length = ids.shape
    plen = [max(1, min(int(p), length)) for p in prefix_lengths]
    groups: dict[tuple[int, ...], int] = {}
    owner = [groups.setdefault(tuple(ids[i, : plen[i]].tolist()), len(groups)) for i in range(b)]
    prefixes = list(groups)
    p_max = max(len(p) for p in prefixes)
    pre_ids = torch.stack([torch.tensor(p + p[-1:] * (p_max - len(p))) for p in prefixes]).to(ids.device)
    pre_pos = torch.arange(p_max, device=ids.device).expand(len(prefixes), -1)
    causal = torch.ones(p_max, p_max, dtype=torch.bool, device=ids.device).tril()
    x = tm.embeddings(input_ids=pre_ids, position_ids=pre_pos)
    kv = []
    for layer in layers:
        x, own = _layer(layer, x, None, causal.expand(len(prefixes), 1, -1, -1))
        kv.append(own)
    pre_out = tm.final_layer_norm(x) if not penultimate else x
    out = x.new_empty(b, length, x.shape[-1])
    n_pos = tm.embeddings.position_embedding.num_embeddings
    # One pass per prefix: its rows' suffixes have one length to pad to (a batch mixing a bare
    # template with "a photo of {}" would otherwise pad every suffix to the longest).
    for g, prefix in enumerate(prefixes):
        rows = [i for i in range(b) if owner[i] == g]
        p, s_len = len(prefix), length - len(prefix)
        for i in rows:
            out[i, :p] = pre_out[g, :p]
        if s_len == 0:
            continue
        pos = torch.arange(p, length, device=ids.device).clamp_max(n_pos - 1).expand(len(rows), -1)
        mask = torch.cat(
            [
                torch.ones(s_len, p, dtype=torch.bool, device=ids.device),
                torch.ones(s_len, s_len, dtype=torch.bool, device=ids.device).tril(),
            ],
            dim=1,
        )
        x = tm.embeddings(input_ids=ids[rows, p:], position_ids=pos)
        for layer, (k, v) in zip(layers, kv):
            x, _ = _layer(
                layer,
                x,
                (k[g : g + 1, :, :p].expand(len(rows), -1, -1, -1), v[g : g + 1, :, :p].expand(len(rows), -1, -1, -1)),
                mask,
            )
        if not penultimate:
            x = tm.final_layer_norm(x)
        out[rows, p:] = x
    return out
