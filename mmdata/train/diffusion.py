"""The forward (noising) process: a discrete schedule of cumulative alphas, epsilon prediction."""

from __future__ import annotations

import math

import torch

from mmdata.train.config import DiffusionConfig

MAX_BETA = 0.999  # clip of the cosine schedule's last steps (Nichol & Dhariwal 2021)
LINEAR_BETA = (1e-4, 0.02)  # the DDPM linear schedule's end points


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    """(T,) float64 cumulative product of alphas, for timesteps 0..T-1."""
    n = cfg.num_timesteps
    if cfg.schedule == "linear":
        betas = torch.linspace(*LINEAR_BETA, n, dtype=torch.float64)
    else:
        s = 0.008

        def f(t: float) -> float:
            return math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f(i + 1) / f(i), MAX_BETA) for i in range(n)], dtype=torch.float64
        )
    return torch.cumprod(1 - betas, 0)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, acp: torch.Tensor
) -> torch.Tensor:
    """Noise clean images x0 (N, C, H, W) to timesteps t (N,): sqrt(a) x0 + sqrt(1 - a) noise."""
    a = acp.to(x0.device)[t].to(x0.dtype)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
