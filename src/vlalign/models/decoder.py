"""A small GPT-style causal language model that can read a prefix of continuous embeddings.

This is the language model of the LLaVA-style / CG-VLM pipeline (METHODS.md §3): a visual adapter
projects image patches into the decoder's embedding space, and those vectors are placed *before*
the text tokens as a prefix. The decoder itself is a plain pre-LN transformer (nanoGPT-like):

    h = tok_emb(ids) (or the prefix vectors) + pos_emb(position)
    h = h + Attn(LN(h));  h = h + MLP(LN(h))      (depth times)
    logits = LN(h) @ W_outᵀ                       (W_out = tok_emb.weight when tied)

or, with ``positions="rope"``, no position embedding and rotary positions in every attention
(RoFormer, Su et al. 2021; LLaMA's, which LLaVA's language model uses): queries and keys are rotated
by their position, so attention scores depend on relative offsets. A head that reads "the token
before the one matching mine" (what copying an attribute out of a caption takes) is then the same
at every position instead of being learnt position by position (docs/cgvlm.md).

Padding is handled with a boolean ``attention_mask`` (True = real). Positions are counted over
real entries only, so left padding (batched generation with different prompt lengths) and
right padding (training batches) both give every real token the position it would have without
padding. Padded entries are never attended to by real ones; their own outputs are meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


POSITION_KINDS = ("learned", "rope")
ROPE_BASE = 10000.0  # RoFormer's θ base


def rotary(positions: Tensor, head_width: int) -> tuple[Tensor, Tensor]:
    """cos and sin of each position's rotation angles: [B, S] -> two [B, 1, S, Dh/2] (broadcast over heads)."""
    inverse = ROPE_BASE ** (-torch.arange(0, head_width, 2, device=positions.device, dtype=torch.float32) / head_width)
    angles = positions.float()[:, None, :, None] * inverse  # [B, 1, S, Dh/2]
    return angles.cos(), angles.sin()


def rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate each pair (x_i, x_{i+Dh/2}) of x [B, H, S, Dh] by its position's angle (the GPT-NeoX layout)."""
    cos, sin = rope
    first, second = x.float().chunk(2, dim=-1)  # [B, H, S, Dh/2] each
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1).to(x.dtype)


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    context_length: int = 128  # maximum number of positions, prefix included
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    tie_embeddings: bool = True  # output projection reuses the input token-embedding table
    positions: str = "learned"  # "learned" absolute embeddings (GPT-2) | "rope" rotary (LLaMA)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "width", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DecoderConfig.{name} must be a positive integer, got {value!r}")
        if self.width % self.heads != 0:
            raise ValueError(
                f"DecoderConfig.width={self.width} is not divisible by heads={self.heads}; "
                "choose a width that is a multiple of the number of heads"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"DecoderConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"DecoderConfig.positions must be one of {', '.join(POSITION_KINDS)}, got {self.positions!r}")
        if self.positions == "rope" and (self.width // self.heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got {self.width // self.heads}")


@dataclass
class DecoderOutput:
    logits: Tensor  # [B, P+L, V]
    # depth + 1 tensors, each [B, P+L, D]: the input of every block, then the final output after the
    # last LayerNorm (the same convention as HF ``output_hidden_states``, which MIR is defined on).
    # With a KV cache they cover only the positions passed to this call.
    hidden_states: tuple[Tensor, ...]


class KVCache:
    """Keys and values of every layer for the positions processed so far, plus which were real.

    Create an empty one, pass it to every ``CausalDecoder.forward`` call of one generation, and
    the decoder appends to it. ``mask`` lets later calls skip padded positions and continue the
    position count of each row where it stopped.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []  # per layer [B, H, S, Dh]
        self.values: list[Tensor] = []  # per layer [B, H, S, Dh]
        self.mask: Tensor | None = None  # [B, S], True = real position

    def __len__(self) -> int:
        """Number of cached positions S (padded ones included)."""
        return 0 if self.mask is None else self.mask.shape[1]

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions of ``layer`` and return all its keys and values so far."""
        if layer == len(self.keys):
            self.keys.append(keys)
            self.values.append(values)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], keys], dim=2)
            self.values[layer] = torch.cat([self.values[layer], values], dim=2)
        return self.keys[layer], self.values[layer]


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None, kv_cache: KVCache | None, layer: int,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # x [B, T, D]; attn_mask [B, 1, T, S] bool or None for plain causal attention with no past;
        # rope: cos, sin [B, 1, T, Dh/2] of this call's positions, or None (learned positions)
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        if rope is not None:  # the cache keeps rotated keys: a key's rotation depends on its position only
            q, k = rotate(q, rope), rotate(k, rope)
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v)  # [B, H, S, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))  # [B, T, D]


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    ``visual_mlp`` (None unless ``vlalign.models.visual_experts`` adds one): Mono-InternVL's visual FFN
    expert. The first ``visual_positions`` positions of a call (the image prefix) go through it, the rest
    through ``mlp``; with no visual positions the block is exactly the plain one.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_attn = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.visual_mlp: nn.Module | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None, kv_cache: KVCache | None, layer: int,
                visual_positions: int = 0, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask, kv_cache, layer, rope)
        h = self.ln_mlp(x)
        if self.visual_mlp is None or visual_positions == 0:
            return x + self.mlp(h)
        routed = [self.visual_mlp(h[:, :visual_positions]), self.mlp(h[:, visual_positions:])]  # image | text
        return x + torch.cat(routed, dim=1)


class CausalDecoder(nn.Module):
    """Decoder-only language model over ``[prefix vectors, text tokens]``; returns logits and hidden states."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.embed_positions = nn.Embedding(cfg.context_length, cfg.width) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.grad_checkpointing = False  # training without a KV cache: recompute each block in backward
        self.ln_final = nn.LayerNorm(cfg.width)
        # Tying is done by reading embed_tokens.weight in forward rather than sharing a Parameter
        # between two modules, so the state dict has no aliased tensors (safetensors refuses those).
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 initialisation: N(0, 0.02) everywhere, residual output projections scaled by
        # 1/sqrt(2·depth) so the residual stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for residual_out in (block.attn.proj, block.mlp[-1]):
                nn.init.normal_(residual_out.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))

    def embed(self, ids: Tensor) -> Tensor:
        """Input token embeddings without positions: [B, L] -> [B, L, D]."""
        return self.embed_tokens(ids)

    def forward(
        self,
        ids: Tensor,
        prefix: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        visual_positions: int = 0,
    ) -> DecoderOutput:
        """Run the decoder on ``[prefix, embed(ids)]``.

        ids: [B, L] token ids (L may be 0 when a prefix is given).
        prefix: [B, P, D] continuous embeddings placed before the tokens (e.g. projected patches).
        attention_mask: [B, P+L] bool, True = real; or [B, L] covering the tokens only, the prefix
            then being all real. Integer 0/1 masks are accepted. None = everything real.
        kv_cache: append this call's keys/values to the cache and attend to the cached positions
            too; the mask and positions continue from what the cache has seen.
        visual_positions: the first this-many prefix positions are image tokens, routed to the blocks'
            visual experts when they have them (Mono-InternVL); 0 = every position is text.
        """
        tokens = self._check_ids(ids)
        prefix_len = self._check_prefix(prefix, ids)
        if not 0 <= visual_positions <= prefix_len:
            raise ValueError(f"visual_positions={visual_positions} must lie in [0, prefix length {prefix_len}]: "
                             "only prefix positions can be image tokens")
        batch, new_len = ids.shape[0], prefix_len + tokens
        new_mask = self._full_mask(attention_mask, batch, prefix_len, tokens, ids.device)  # [B, P+L] or None
        past_len = 0 if kv_cache is None else len(kv_cache)
        if past_len + new_len > self.cfg.context_length:
            raise ValueError(
                f"sequence of {past_len + new_len} positions ({past_len} cached + {prefix_len} prefix + {tokens} "
                f"tokens) exceeds context_length={self.cfg.context_length}; shorten the input or build the "
                "decoder with a larger context_length"
            )
        if kv_cache is not None and kv_cache.mask is not None and kv_cache.mask.shape[0] != batch:
            raise ValueError(f"kv_cache holds batch size {kv_cache.mask.shape[0]} but ids have batch size {batch}")

        past_mask = None if past_len == 0 else kv_cache.mask
        positions = _positions(past_mask, new_mask, batch, past_len, new_len, ids.device)  # [B, P+L]
        x = self.embed(ids)  # [B, L, D]
        if prefix_len:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, P+L, D]
        x, rope = self._add_positions(x, positions)

        attn_mask = None  # None = plain causal attention over this call's positions only
        if new_mask is not None or past_mask is not None:
            attn_mask = _attention_mask(past_mask, new_mask, batch, past_len, new_len, ids.device)
        out = self._blocks_and_head(x, attn_mask, kv_cache, visual_positions, rope)
        if kv_cache is not None:
            step_mask = new_mask if new_mask is not None else torch.ones(batch, new_len, dtype=torch.bool, device=ids.device)
            kv_cache.mask = step_mask if past_mask is None else torch.cat([past_mask, step_mask], dim=1)
        return out

    def forward_packed(self, embeds: Tensor, positions: Tensor, attn_mask: Tensor) -> DecoderOutput:
        """Run packed rows (``vlalign.models.packing``): embeds [R, S, D] (token embeddings or prefix
        vectors, without positions), positions [R, S] restarting in every example, attn_mask [R, 1, S, S]
        the block-diagonal causal mask. -> logits [R, S, V]."""
        if int(positions.max()) >= self.cfg.context_length:
            raise ValueError(f"a packed example reaches position {int(positions.max())}, beyond "
                             f"context_length={self.cfg.context_length}")
        x, rope = self._add_positions(embeds, positions)
        return self._blocks_and_head(x, attn_mask, None, 0, rope)

    def _add_positions(self, x: Tensor, positions: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x [B, S, D] with learned position embeddings added, or x and the rotary cos/sin of ``positions`` [B, S]."""
        if self.embed_positions is not None:
            return x + self.embed_positions(positions), None
        return x, rotary(positions, self.cfg.width // self.cfg.heads)

    def _blocks_and_head(self, x: Tensor, attn_mask: Tensor | None, kv_cache: KVCache | None,
                         visual_positions: int = 0, rope: tuple[Tensor, Tensor] | None = None) -> DecoderOutput:
        hidden_states = []
        for layer, block in enumerate(self.blocks):
            hidden_states.append(x)
            if self.grad_checkpointing and self.training and kv_cache is None:
                x = checkpoint(block, x, attn_mask, None, layer, visual_positions, rope, use_reentrant=False)
            else:
                x = block(x, attn_mask, kv_cache, layer, visual_positions, rope)
        x = self.ln_final(x)
        hidden_states.append(x)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight  # [V, D]
        return DecoderOutput(logits=F.linear(x, weight), hidden_states=tuple(hidden_states))

    @torch.no_grad()
    def generate(
        self,
        ids: Tensor,
        prefix: Tensor | None = None,
        max_new_tokens: int = 32,
        eos_id: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        attention_mask: Tensor | None = None,
        visual_positions: int = 0,
    ) -> Tensor:
        """Continue ``[prefix, ids]`` and return the new tokens [B, T_new], T_new <= max_new_tokens.

        temperature 0 = greedy (argmax); otherwise sample from softmax(logits / temperature),
        restricted to the ``top_k`` most likely tokens when given, drawing from ``generator``.
        Prompts of different lengths must be LEFT-padded, with ``attention_mask`` marking the
        real entries (same forms as in ``forward``). Once a row emits ``eos_id`` its remaining
        tokens are ``eos_id``; generation stops early when every row has finished.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        tokens = self._check_ids(ids)
        prefix_len = self._check_prefix(prefix, ids)
        batch = ids.shape[0]
        if prefix_len + tokens == 0:
            raise ValueError("generate needs something to continue: give a prefix or at least one token in ids")
        # The last fed position is the last real one only with left padding.
        mask = self._full_mask(attention_mask, batch, prefix_len, tokens, ids.device)
        if mask is not None and not bool(mask[:, -1].all()):
            raise ValueError("generate needs LEFT-padded prompts: attention_mask[:, -1] must be True for every row")
        needed = prefix_len + tokens + max_new_tokens - 1  # the last new token is never fed back
        if needed > self.cfg.context_length:
            raise ValueError(
                f"prefix ({prefix_len}) + prompt ({tokens}) + max_new_tokens ({max_new_tokens}) - 1 = {needed} "
                f"exceeds context_length={self.cfg.context_length}; lower max_new_tokens"
            )

        cache = KVCache() if use_cache else None
        logits = self(ids, prefix, mask, kv_cache=cache, visual_positions=visual_positions).logits[:, -1]  # [B, V]
        finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        new_tokens = []
        for step in range(max_new_tokens):
            next_ids = _pick_next(logits, temperature, top_k, generator)  # [B]
            if eos_id is not None:
                next_ids = torch.where(finished, torch.full_like(next_ids, eos_id), next_ids)
                finished |= next_ids == eos_id
            new_tokens.append(next_ids)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            if cache is not None:
                logits = self(next_ids[:, None], kv_cache=cache).logits[:, -1]
            else:
                ids = torch.cat([ids, next_ids[:, None]], dim=1)
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                logits = self(ids, prefix, mask, visual_positions=visual_positions).logits[:, -1]
        return torch.stack(new_tokens, dim=1)

    def _check_ids(self, ids: Tensor) -> int:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor [B, L], got dtype {ids.dtype} and shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]; "
                "check that the tokenizer matches DecoderConfig.vocab_size"
            )
        return ids.shape[1]

    def _check_prefix(self, prefix: Tensor | None, ids: Tensor) -> int:
        if prefix is None:
            return 0
        if prefix.dim() != 3 or prefix.shape[0] != ids.shape[0] or prefix.shape[2] != self.cfg.width:
            raise ValueError(
                f"prefix must be [B={ids.shape[0]}, P, D={self.cfg.width}], got shape {tuple(prefix.shape)}; "
                "project image features to the decoder width first"
            )
        return prefix.shape[1]

    @staticmethod
    def _full_mask(mask: Tensor | None, batch: int, prefix_len: int, tokens: int, device) -> Tensor | None:
        """Normalise an attention mask to bool [B, P+L] (None stays None)."""
        if mask is None:
            return None
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(f"attention_mask must be bool or 0/1 integers (True = real), got dtype {mask.dtype}")
        if mask.shape == (batch, prefix_len + tokens):
            return mask.to(device=device, dtype=torch.bool)
        if prefix_len and mask.shape == (batch, tokens):
            prefix_mask = torch.ones(batch, prefix_len, dtype=torch.bool, device=device)
            return torch.cat([prefix_mask, mask.to(device=device, dtype=torch.bool)], dim=1)
        raise ValueError(
            f"attention_mask must have shape [B, P+L] = {(batch, prefix_len + tokens)} or [B, L] = {(batch, tokens)}, "
            f"got {tuple(mask.shape)}"
        )


def _positions(past_mask: Tensor | None, new_mask: Tensor | None, batch: int, past_len: int, new_len: int, device) -> Tensor:
    """Position of each new entry = number of real entries before it in its row. [B, P+L] long."""
    if past_mask is None and new_mask is None:
        return torch.arange(new_len, device=device).expand(batch, new_len)
    offset = 0 if past_mask is None else past_mask.sum(1, keepdim=True)  # [B, 1]: real entries already cached
    if new_mask is None:
        return offset + torch.arange(new_len, device=device)
    # Padded entries get position 0: any valid index works, since nothing real attends to them.
    return (offset + new_mask.long().cumsum(1) - 1).clamp(min=0)


def _attention_mask(past_mask: Tensor | None, new_mask: Tensor | None, batch: int, past_len: int, new_len: int, device) -> Tensor:
    """Bool [B, 1, T, S]: query t (absolute index past_len + t) may see key s iff s <= it and s is real."""
    total = past_len + new_len
    key_real = torch.ones(batch, total, dtype=torch.bool, device=device)
    if past_mask is not None:
        key_real[:, :past_len] = past_mask
    if new_mask is not None:
        key_real[:, past_len:] = new_mask
    query_index = torch.arange(past_len, total, device=device)[:, None]  # [T, 1]
    key_index = torch.arange(total, device=device)[None, :]  # [1, S]
    allowed = (key_index <= query_index)[None] & key_real[:, None, :]  # [B, T, S]
    # Every query also sees itself, so a padded query never has an all-masked row: what SDPA returns
    # for one depends on backend and torch version (NaN in some). Real queries see themselves anyway.
    allowed |= key_index == query_index
    return allowed[:, None]  # [B, 1, T, S]


def _pick_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """One token per row from logits [B, V]: argmax when temperature is 0, else a (top-k) sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
