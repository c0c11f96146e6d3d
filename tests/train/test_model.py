"""The UNet, its context path, LoRA, condition dropout and the sampler."""

from __future__ import annotations

import pytest
import torch
from trainfix import tiny_model

from mmdata.train.config import DiffusionConfig, ModelConfig
from mmdata.train.diffusion import alphas_cumprod, q_sample
from mmdata.train.loop import sample_dropout
from mmdata.train.model import (
    Conditioning,
    InstructUNet,
    apply_lora,
    context_parameter_share,
)
from mmdata.train.sampler import GuidedDenoiser, ddim_sample, ddim_timesteps, sample_images


def make_cond(
    n: int = 2, k: int = 3, length: int = 5, size: int = 16, seed: int = 0
) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, k, dtype=torch.bool)
    mask[-1, 1:] = False
    return Conditioning(
        text_tokens=torch.randn(n, length, 384, generator=g),
        text_mask=torch.ones(n, length, dtype=torch.bool),
        text_pooled=torch.randn(n, 384, generator=g),
        ctx_images=torch.rand(n, k, 3, size, size, generator=g) * 2 - 1,
        ctx_emb=torch.randn(n, k, 384, generator=g),
        ctx_mask=mask,
    )


@pytest.fixture(scope="module")
def model() -> InstructUNet:
    torch.manual_seed(0)
    return InstructUNet(tiny_model()).eval()


def test_shapes_and_padding_entries_do_not_matter(model: InstructUNet) -> None:
    cond = make_cond()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
        cond.ctx_images[-1, 1:] = 7.0  # masked-out padding entries: changing them changes nothing
        assert torch.allclose(out, model(x, t, cond), atol=1e-6)


def test_zeroing_the_context_changes_the_prediction(model: InstructUNet) -> None:
    cond = make_cond()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    with torch.no_grad():
        full = model(x, t, cond)
        no_ctx = model(x, t, cond.drop(context=torch.ones(2, dtype=torch.bool)))
        other = make_cond(seed=1)
        cond.ctx_images = other.ctx_images  # different context images, same texts
        swapped = model(x, t, cond)
    assert (full - no_ctx).abs().mean() > 1e-3
    assert (full - swapped).abs().mean() > 1e-4  # the images themselves matter, not only the mask


def test_context_layer_uses_the_shared_encoder_and_is_a_small_share() -> None:
    share = context_parameter_share(InstructUNet(ModelConfig()))
    # One cross-attention layer (+ projections) on the bottleneck; the encoder itself is reused.
    assert 0.005 < share["share_of_total"] < 0.05, share
    base = InstructUNet(ModelConfig(use_context=False))
    assert share["total"] - share["context_added"] == sum(p.numel() for p in base.parameters())


def test_context_gradients_reach_the_shared_encoder() -> None:
    torch.manual_seed(0)
    m = InstructUNet(tiny_model())
    cond = make_cond()
    cond.ctx_images.requires_grad_(True)
    m(torch.randn(2, 3, 16, 16), torch.tensor([10, 10]), cond).pow(2).mean().backward()
    assert (
        cond.ctx_images.grad.abs().sum() > 0
    )  # gradient flows through conv_in/down on the context


def test_lora_trains_only_adapters_and_starts_identical(model: InstructUNet) -> None:
    cond = make_cond()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 200])
    with torch.no_grad():
        before = model(x, t, cond)
    torch.manual_seed(0)
    lora = apply_lora(
        InstructUNet(tiny_model()), 4, 8, 0.0, ("to_q", "to_k", "to_v", "to_out"), True
    )
    lora.load_state_dict(
        {k: v for k, v in model.state_dict().items()}
        | {k: v for k, v in lora.state_dict().items() if "lora_" in k},
        strict=False,
    )
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("ctx_", "null_ctx")) for n in trainable)
    assert any("cross_attn.to_k.lora_A" in n for n in trainable)
    with torch.no_grad():
        after = lora.eval()(x, t, cond)
    assert torch.allclose(before, after, atol=1e-5)  # LoRA B starts at zero


def test_condition_dropout_rates() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200_000
    drop_text, drop_ctx = sample_dropout(n, 0.1, 0.1, g)
    both = (drop_text & drop_ctx).float().mean().item()
    ctx_only = (~drop_text & drop_ctx).float().mean().item()
    assert abs(both - 0.1) < 0.005 and abs(ctx_only - 0.1) < 0.005
    assert not (drop_text & ~drop_ctx).any()  # text is never dropped alone
    text2, ctx2 = sample_dropout(n, 0.3, 0.0, g)
    assert abs(text2.float().mean().item() - 0.3) < 0.005 and torch.equal(text2, ctx2)


def test_drop_masks_text_and_pooled() -> None:
    cond = make_cond()
    d = cond.drop(text=torch.tensor([True, False]), context=torch.tensor([False, True]))
    assert not d.text_mask[0].any() and d.text_mask[1].all()
    assert d.text_pooled[0].abs().sum() == 0 and torch.equal(d.text_pooled[1], cond.text_pooled[1])
    assert torch.equal(d.ctx_mask[0], cond.ctx_mask[0]) and not d.ctx_mask[1].any()


def test_q_sample_and_schedule() -> None:
    acp = alphas_cumprod(DiffusionConfig())
    assert acp.shape == (1000,) and acp[0] > 0.999 and acp[-1] < 1e-3
    assert (acp[1:] <= acp[:-1]).all()
    x0, noise = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert torch.allclose(q_sample(x0, torch.tensor([0]), noise, acp), acp[0].sqrt().float() * x0)


def test_sampler_shapes_and_determinism(model: InstructUNet) -> None:
    acp = alphas_cumprod(DiffusionConfig())
    cond = make_cond()

    def run(seed: int, eta: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample_images(model, cond, acp, 16, steps=4, eta=eta, generator=g)

    a, b, c = run(0, 0.0), run(0, 0.0), run(1, 0.0)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(run(0, 1.0), run(0, 1.0)) and not torch.equal(run(0, 1.0), a)
    assert ddim_timesteps(1000, 4).tolist() == [999, 666, 333, 0]


def test_guidance_combines_three_branches() -> None:
    """The wrapper computes e0 + s_t (e_text - e0) + s_c (e_full - e_text) from the dropped branches."""

    class Probe(torch.nn.Module):
        # eps = 1 * [text kept] + 10 * [context kept], per row
        def forward(self, x, t, cond):
            v = cond.text_mask.any(1).float() + 10 * cond.ctx_mask.any(1).float()
            return v[:, None, None, None].expand_as(x)

    cond = make_cond()
    den = GuidedDenoiser(Probe(), cond, text_scale=2.0, context_scale=3.0)
    eps = den(torch.zeros(2, 3, 4, 4), torch.tensor([5, 5]))
    assert torch.allclose(eps, torch.full_like(eps, 2.0 * 1 + 3.0 * 10))
    x = ddim_sample(
        den, torch.zeros(2, 3, 4, 4), torch.tensor([10, 0]), alphas_cumprod(DiffusionConfig())
    )
    assert x.shape == (2, 3, 4, 4)


def test_ddim_recovers_the_data_point_of_an_exact_denoiser() -> None:
    """Data = one point x*: the exact eps(x, t) = (x - sqrt(a) x*) / sqrt(1 - a); DDIM must land on x*."""
    acp = alphas_cumprod(DiffusionConfig())
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = acp[t].float()[:, None, None, None]
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    for steps in (5, 50):
        assert torch.allclose(
            ddim_sample(exact, x, ddim_timesteps(1000, steps), acp), target, atol=1e-4
        )
    noisy = ddim_sample(exact, x, ddim_timesteps(1000, 20), acp, eta=1.0, generator=g)
    assert torch.allclose(noisy, target, atol=1e-4)
