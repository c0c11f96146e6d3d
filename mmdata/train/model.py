"""The Instruct-Imagen-style model: a text-conditioned pixel-space diffusion UNet with a context path.

Pure `nn.Module`s: tensors in, tensors out; no file I/O and no device picking.

Context path (the recipe): each context image is encoded by the UNet's *own* down-sampling encoder
(`conv_in` + `down`, shared weights) at t = 0, conditioned on its `marker + text` embedding (added to the
time embedding and used as the encoder's cross-attention keys). The bottleneck feature maps of all context
entries, plus a projection of their `marker + text` vector and a learned position embedding, become the
keys/values of ONE new cross-attention layer on the bottleneck (`ctx_attn`). `context_parameter_share()`
reports the share of parameters this path adds.

Conditioning dropout (classifier-free guidance) is expressed with masks: a learned null token is always
attendable, so a sample with every text token / context entry masked sees only the null token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mmdata.train.config import ModelConfig

CONTEXT_PARAM_PREFIXES = ("ctx_attn.", "ctx_text_proj.", "ctx_pos", "null_ctx")


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on, batched.

    Attributes:
        text_tokens: (N, L, D) payload text token embeddings.
        text_mask: (N, L) bool, True on real tokens (all False = text dropped).
        text_pooled: (N, D) pooled payload text.
        ctx_images: (N, K, C, H, W) context images in [-1, 1] (padding entries arbitrary).
        ctx_emb: (N, K, D) pooled `marker + text` embedding of each context entry.
        ctx_mask: (N, K) bool, True on real context entries (all False = context dropped).
    """

    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    text_pooled: torch.Tensor
    ctx_images: torch.Tensor
    ctx_emb: torch.Tensor
    ctx_mask: torch.Tensor

    def drop(
        self, text: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> Conditioning:
        """Return a copy with text (and pooled text) and/or context masked out where the (N,) bool is True."""
        out = replace(self)
        if text is not None:
            keep = ~text
            out.text_mask = self.text_mask & keep[:, None]
            out.text_pooled = self.text_pooled * keep[:, None].to(self.text_pooled.dtype)
        if context is not None:
            out.ctx_mask = self.ctx_mask & ~context[:, None]
        return out

    @staticmethod
    def cat(conds: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch (text lengths must match)."""
        return Conditioning(
            *(torch.cat([getattr(c, f) for c in conds]) for f in Conditioning.__dataclass_fields__)
        )

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(
            *(getattr(self, f).to(device) for f in Conditioning.__dataclass_fields__)
        )


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with scale/shift from the embedding. x: (N, C, H, W), emb: (N, E)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention; `to_q/to_k/to_v/to_out` are the projections LoRA targets.

    x: (N, Lq, C) queries; context: (N, Lk, Ck) keys/values; mask: (N, Lk) bool (True = attend).
    """

    def __init__(self, dim: int, context_dim: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, dim // head_channels)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, lq, c = x.shape
        q = self.to_q(x).view(n, lq, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(n, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(n, context.shape[1], self.heads, -1).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(n, lq, c))


class AttnBlock(nn.Module):
    """Self-attention, then cross-attention on the text tokens, then a feed-forward. x: (N, C, H, W)."""

    def __init__(self, channels: int, cond_dim: int, head_channels: int) -> None:
        super().__init__()
        self.norm_in = _norm(channels)
        self.norm1 = nn.LayerNorm(channels)
        self.self_attn = Attention(channels, channels, head_channels)
        self.norm2 = nn.LayerNorm(channels)
        self.cross_attn = Attention(channels, cond_dim, head_channels)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.norm_in(x).flatten(2).transpose(1, 2)
        y = self.norm1(t)
        t = t + self.self_attn(y, y)
        t = t + self.cross_attn(self.norm2(t), text, text_mask)
        t = t + self.ff(self.norm3(t))
        return x + t.transpose(1, 2).reshape(n, c, h, w)


class ContextCrossAttention(nn.Module):
    """The one new layer: bottleneck features attend to the encoded context. x: (N, C, h, w)."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.norm_in = _norm(channels)
        self.norm = nn.LayerNorm(channels)
        self.norm_ctx = nn.LayerNorm(channels)
        self.attn = Attention(channels, channels, head_channels)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.norm(self.norm_in(x).flatten(2).transpose(1, 2))
        out = self.attn(t, self.norm_ctx(ctx), ctx_mask)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class Level(nn.Module):
    """Residual blocks (+ attention blocks) of one resolution level."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module] | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns) if attns else None


class InstructUNet(nn.Module):
    """Text- and context-conditioned epsilon-prediction UNet.

    forward(x: (N, C, H, W) noisy images in [-1, 1] scale, t: (N,) timesteps, cond) -> (N, C, H, W) noise.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # Text: tokens -> cross-attention keys; pooled -> added to the time embedding (as in Imagen).
        self.text_proj = nn.Sequential(
            nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.cond_dim)
        )
        self.pooled_proj = nn.Sequential(
            nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, emb_dim)
        )
        self.null_text = nn.Parameter(torch.randn(1, 1, cfg.cond_dim) * 0.02)

        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        widths = [ch * m for m in cfg.channel_mults]
        skip_channels = [ch]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cur = ch
        for lv, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cur, width, emb_dim, cfg.dropout))
                cur = width
                if lv in cfg.attention_levels:
                    attns.append(AttnBlock(cur, cfg.cond_dim, cfg.head_channels))
                skip_channels.append(cur)
            self.down.append(Level(blocks, attns if lv in cfg.attention_levels else None))
            if lv < len(widths) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_channels.append(cur)
        self.mid_block1 = ResBlock(cur, cur, emb_dim, cfg.dropout)
        self.mid_attn = AttnBlock(cur, cfg.cond_dim, cfg.head_channels)
        self.mid_block2 = ResBlock(cur, cur, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lv in reversed(range(len(widths))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skip_channels.pop(), widths[lv], emb_dim, cfg.dropout))
                cur = widths[lv]
                if lv in cfg.attention_levels:
                    attns.append(AttnBlock(cur, cfg.cond_dim, cfg.head_channels))
            self.up.append(Level(blocks, attns if lv in cfg.attention_levels else None))
            if lv > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)

        if cfg.use_context:
            mid = widths[-1]
            side = cfg.image_size // 2 ** (len(widths) - 1)
            self.ctx_text_proj = nn.Sequential(
                nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, mid)
            )
            self.ctx_pos = nn.Parameter(torch.randn(1, side * side, mid) * 0.02)
            self.null_ctx = nn.Parameter(torch.randn(1, 1, mid) * 0.02)
            self.ctx_attn = ContextCrossAttention(mid, cfg.head_channels)

    # -- pieces ------------------------------------------------------------------------------
    def _embed(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t, self.cfg.base_channels)) + self.pooled_proj(
            pooled
        )

    def _text_keys(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project text tokens and prepend the always-attendable null token."""
        n = tokens.shape[0]
        keys = torch.cat(
            [self.null_text.expand(n, -1, -1).to(tokens.dtype), self.text_proj(tokens)], 1
        )
        mask = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=mask.device), mask], 1)
        return keys, mask

    def _encode(
        self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down-sampling encoder: (N, C, H, W) -> bottleneck-resolution features and skips."""
        h = self.conv_in(x)
        skips = [h]
        for lv, level in enumerate(self.down):
            for i, block in enumerate(level.blocks):
                h = block(h, emb)
                if level.attns is not None:
                    h = level.attns[i](h, text, text_mask)
                skips.append(h)
            if lv < len(self.downsample):
                h = self.downsample[lv](h)
                skips.append(h)
        return h, skips

    def encode_context(
        self, images: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode context entries with the shared down-sampling encoder.

        Args:
            images: (N, K, C, H, W) context images.
            emb: (N, K, D) pooled `marker + text` embeddings.
            mask: (N, K) bool, True on real entries; only those are encoded.

        Returns:
            keys (N, 1 + K*h*w, C_mid) with a leading null token, and their (N, 1 + K*h*w) bool mask.
        """
        n, k = mask.shape
        side2 = self.ctx_pos.shape[1]
        mid = self.ctx_pos.shape[2]
        feats = images.new_zeros(n, k, side2, mid)
        if mask.any():
            sel_img, sel_emb = images[mask], emb[mask]
            t0 = torch.zeros(sel_img.shape[0], device=images.device)
            keys, keys_mask = self._text_keys(
                sel_emb[:, None], torch.ones_like(t0, dtype=torch.bool)[:, None]
            )
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.context_grad):
                h, _ = self._encode(sel_img, self._embed(t0, sel_emb), keys, keys_mask)
            tokens = (
                h.flatten(2).transpose(1, 2) + self.ctx_pos + self.ctx_text_proj(sel_emb)[:, None]
            )
            feats = feats.to(tokens.dtype)
            feats[mask] = tokens
        feats = feats.reshape(n, k * side2, mid)
        null = self.null_ctx.expand(n, -1, -1).to(feats.dtype)
        tok_mask = mask[:, :, None].expand(n, k, side2).reshape(n, k * side2)
        ones = torch.ones(n, 1, dtype=torch.bool, device=mask.device)
        return torch.cat([null, feats], 1), torch.cat([ones, tok_mask], 1)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        emb = self._embed(t, cond.text_pooled)
        text, text_mask = self._text_keys(cond.text_tokens, cond.text_mask)
        h, skips = self._encode(x, emb, text, text_mask)
        h = self.mid_block1(h, emb)
        h = self.mid_attn(h, text, text_mask)
        if self.cfg.use_context:
            ctx, ctx_mask = self.encode_context(cond.ctx_images, cond.ctx_emb, cond.ctx_mask)
            h = self.ctx_attn(h, ctx, ctx_mask)
        h = self.mid_block2(h, emb)
        for i, level in enumerate(self.up):
            for j, block in enumerate(level.blocks):
                h = block(torch.cat([h, skips.pop()], 1), emb)
                if level.attns is not None:
                    h = level.attns[j](h, text, text_mask)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def context_parameter_share(model: InstructUNet) -> dict[str, float]:
    """How many parameters the context path adds (it reuses the encoder, so only the new layer)."""
    total = count_parameters(model)
    added = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(CONTEXT_PARAM_PREFIXES)
    )
    return {
        "total": total,
        "context_added": added,
        "share_of_total": added / total,
        "growth_over_base": added / max(1, total - added),
    }


def apply_lora(
    model: InstructUNet,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: tuple[str, ...],
    train_context_layer: bool,
) -> InstructUNet:
    """Inject peft LoRA adapters into the attention projections and freeze everything else.

    The context cross-attention layer stays fully trainable when `train_context_layer` (it is new in
    stage 1 and small); its projections get no adapter then.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and n.rsplit(".", 1)[-1] in target_modules
        and not (train_context_layer and n.startswith("ctx_attn."))
    ]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    model = inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        p.requires_grad_(
            "lora_" in n or (train_context_layer and n.startswith(CONTEXT_PARAM_PREFIXES))
        )
    return model
