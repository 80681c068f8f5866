"""Transformer building blocks shared by every tower: pre-LN blocks over ``scaled_dot_product_attention``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; with ``rows`` [B] (one query position per sample) -> [B, 1, D]."""
        if rows is not None:
            return self._one_query(x, rows, attn_mask, is_causal)
        return self.attend(x, attn_mask, is_causal)[0]

    def attend(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
               is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output [B, T, D], keys [B, heads, T, D/heads]); token merging measures similarity on the keys."""
        B, T, D = x.shape
        # [B, T, 3D] -> 3 x [B, heads, T, D/heads]
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(out.transpose(1, 2).reshape(B, T, D)), k

    def _one_query(self, x: torch.Tensor, rows: torch.Tensor, attn_mask: torch.Tensor | None,
                   is_causal: bool) -> torch.Tensor:
        """Attention output at position ``rows[b]`` of each sample only: keys and values of every position,
        the query of one (the same numbers as row ``rows[b]`` of the full output). ``qkv`` runs whole, so
        that an adapter wrapped around it (LoRA) applies as usual."""
        B, T, D = x.shape
        batch = torch.arange(B, device=x.device)
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)
        q = qkv[batch, rows, 0].unsqueeze(2)  # [B, H, 1, hd]
        k, v = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # 2 x [B, H, T, hd]
        mask = None  # [B, 1, 1, T]: the query's row of the full mask
        if attn_mask is not None:
            mask = attn_mask.expand(B, -1, T, T)[batch, :, rows].unsqueeze(2)
        if is_causal:
            causal = (torch.arange(T, device=x.device) <= rows[:, None])[:, None, None, :]
            mask = causal if mask is None else mask & causal
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, 1, hd]
        return self.proj(out.transpose(1, 2).reshape(B, 1, D))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702x), the sigmoid approximation of GELU that OpenAI's CLIP was trained with (Radford et al. 2021)."""
    return x * torch.sigmoid(1.702 * x)


# The MLP non-linearity by name: "gelu" (exact, erf) is vlalign's; "quick_gelu" reads OpenAI CLIP weights.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x)).

    ``cross`` (optional) maps the residual stream between the two: FIBER's cross-attention into the
    other tower (``vlalign.models.fusion``). Passing it through ``forward`` keeps module hooks (FSDP) intact.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        # round, not int: a ratio read from a checkpoint (hidden / width) must give back its hidden width exactly
        self.mlp = MLP(width, round(width * mlp_ratio), activation)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cross: Callable[[torch.Tensor], torch.Tensor] | None = None,
                merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """``merge`` (optional) maps (x [B, T, D], keys [B, heads, T, D/heads]) to fewer tokens between the
        attention and the MLP, where ToMe merges (Bolya et al. 2023, §3; see ``token_merging.py``). With
        ``rows`` [B], only position ``rows[b]`` of each sample is computed -> [B, 1, D] (no cross/merge)."""
        if rows is not None:
            picked = x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)  # [B, 1, D]
            picked = picked + self.attn(self.ln_1(x), attn_mask, is_causal, rows)
            return picked + self.mlp(self.ln_2(picked))
        h, keys = self.attn.attend(self.ln_1(x), attn_mask, is_causal)
        x = x + h
        if cross is not None:
            x = cross(x)
        if merge is not None:
            x = merge(x, keys)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks that can return every layer's output (for multi-layer fusion and diagnostics)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, activation) for _ in range(depth))
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
        last_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, T, D] -> ([B, T, D], per-block outputs). ``last_rows`` [B]: the caller reads only position
        ``last_rows[b]`` of the output (a CLS or EOS token), so the last block computes that row alone:
        its keys and values still come from every position, but the query, output projection and MLP
        run for one token (2/3 of the block's FLOPs saved). The output is then [B, 1, D]."""
        intermediates = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            rows = last_rows if i == last else None
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask, is_causal, rows=rows, use_reentrant=False)
            else:
                x = block(x, attn_mask, is_causal, rows=rows)
            intermediates.append(x)
        return x, intermediates


def padding_attn_mask(mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, T] from a key mask [B, T] (True = real token).

    A query row whose keys are all masked would give NaN; every row keeps at least its own
    position so padded queries stay finite (their outputs are ignored downstream).
    """
    B, T = mask.shape
    allowed = mask[:, None, None, :].expand(B, 1, T, T)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=mask.device)
    return allowed | eye


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linear and embedding weights, zero biases (ViT / CLIP practice)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
