"""DDIM sampling with classifier-free guidance that has separate text and context scales.

The sampler is a function of `(denoiser, x, timesteps, alphas_cumprod, generator)`; guidance is a wrapper
around the model (`GuidedDenoiser`), not inside the sampler; randomness is injectable (`generator=`).

Guidance follows the two training dropouts (text+context dropped; context only dropped):

    eps = eps(0, 0) + s_text * (eps(text, 0) - eps(0, 0)) + s_ctx * (eps(text, ctx) - eps(text, 0))
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmdata.train.model import Conditioning

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GuidedDenoiser:
    """Wrap a model into `eps(x, t)` with classifier-free guidance.

    Args:
        model: `model(x, t, cond) -> eps`.
        cond: the full conditioning, batched like x.
        text_scale: guidance scale of the text (1 = no text guidance).
        context_scale: guidance scale of the context (1 = no context guidance).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cond: Conditioning,
        text_scale: float = 3.0,
        context_scale: float = 1.5,
    ) -> None:
        self.model = model
        self.text_scale = text_scale
        self.context_scale = context_scale
        n = cond.text_mask.shape[0]
        everything = torch.ones(n, dtype=torch.bool, device=cond.text_mask.device)
        self.conds = Conditioning.cat(
            [cond.drop(text=everything, context=everything), cond.drop(context=everything), cond]
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model(torch.cat([x] * 3), torch.cat([t] * 3), self.conds)
        e_none, e_text, e_full = eps.float().chunk(3)
        return e_none + self.text_scale * (e_text - e_none) + self.context_scale * (e_full - e_text)


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """`steps` evenly spaced training timesteps, descending, e.g. [999, ..., 0]."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"sampling steps must be between 1 and the model's {num_train_timesteps} training "
            f"timesteps, got {steps}"
        )
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long()


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Run DDIM from pure noise `x` (N, C, H, W) down the descending `timesteps`.

    Args:
        denoiser: eps(x, t) with t (N,) long timesteps.
        x: initial noise.
        timesteps: descending training timesteps to visit.
        alphas_cumprod: (T,) schedule.
        eta: 0 = deterministic DDIM; 1 = DDPM-like noise.
        generator: randomness for eta > 0 (on x's device).
        clip_x0: clamp the predicted clean image to [-1, 1] at every step.

    Returns:
        (N, C, H, W) samples in [-1, 1].
    """
    acp = alphas_cumprod.to(x.device, torch.float64)
    n = x.shape[0]
    for i, t in enumerate(timesteps.tolist()):
        a_t = acp[t]
        a_prev = acp[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(a_t)
        eps = denoiser(x, torch.full((n,), t, device=x.device, dtype=torch.long)).double()
        xd = x.double()
        x0 = (xd - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (xd - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x_next = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(timesteps):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            x_next = x_next + sigma * noise
        x = x_next.to(x.dtype)
    return x.clamp(-1, 1)


def sample_images(
    model: torch.nn.Module,
    cond: Conditioning,
    alphas_cumprod: torch.Tensor,
    image_size: int,
    steps: int = 50,
    text_scale: float = 3.0,
    context_scale: float = 1.5,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """Generate one image per conditioning row: (N, C, S, S) in [-1, 1]."""
    n = cond.text_mask.shape[0]
    device = cond.text_mask.device
    x = torch.randn((n, channels, image_size, image_size), generator=generator, device=device)
    denoiser = GuidedDenoiser(model, cond, text_scale, context_scale)
    timesteps = ddim_timesteps(len(alphas_cumprod), steps)
    return ddim_sample(denoiser, x, timesteps, alphas_cumprod, eta=eta, generator=generator)
