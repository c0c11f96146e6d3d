"""EfficientNet-Lite0 image features and MiniLM text embeddings with their real weights."""

from __future__ import annotations

import math

import numpy as np
import torch

from mmdata.models.features import to_imagenet_input

from .conftest import corpus_sample, outputs

# ImageNet classes 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
CAT_CLASSES = range(281, 286)


def recall_at_k(vectors: np.ndarray, labels: list[str], k: int) -> float:
    """Share of queries with at least one other same-label item among their k nearest (cosine)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean([any(labels[j] == labels[i] for j in row) for i, row in enumerate(top)]))


def test_efficientnet_weights_classify_a_real_photo(effnet) -> None:  # noqa: ANN001
    from skimage import data

    _, model = effnet
    x = torch.from_numpy(to_imagenet_input(data.chelsea()))[None]
    with torch.inference_mode():
        probs = model.net(x).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5


def test_features_same_emoji_across_styles_is_nearer(effnet) -> None:  # noqa: ANN001
    sample = corpus_sample(n_subjects=6)
    vecs = np.stack(outputs(effnet, [img for img, _ in sample]))
    assert vecs.shape == (len(sample), 1280)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    labels = [r["subject"] for _, r in sample]
    r1, r5 = recall_at_k(vecs, labels, 1), recall_at_k(vecs, labels, 5)
    n, n_same = len(sample), len(sample) // 6 - 1  # other styles of the same subject
    chance1 = n_same / (n - 1)
    chance5 = 1 - math.comb(n - 1 - n_same, 5) / math.comb(n - 1, 5)
    print(
        f"EfficientNet-Lite0 on {n} corpus emoji: recall@1 {r1:.3f} recall@5 {r5:.3f} "
        f"(chance {chance1:.3f} / {chance5:.3f})"
    )
    assert r1 > 3 * chance1 and r5 > chance5 + 0.15
    sims = vecs @ vecs.T
    same = np.array([[a == b for b in labels] for a in labels]) & ~np.eye(len(labels), dtype=bool)
    assert sims[same].mean() > sims[~same & ~np.eye(len(labels), dtype=bool)].mean() + 0.05


def test_features_batch_invariance_and_determinism(effnet, icons, photos) -> None:  # noqa: ANN001
    imgs = [icons[("face", "flat")], photos["coffee"], icons[("moon", "outline")]]
    together = outputs(effnet, imgs)
    for img, v in zip(imgs, together, strict=True):
        np.testing.assert_allclose(outputs(effnet, [img])[0], v, atol=1e-5)
    np.testing.assert_array_equal(outputs(effnet, imgs)[1], together[1])


def test_minilm_text_embeddings(minilm) -> None:  # noqa: ANN001
    texts = ["a cat sleeping on a sofa", "a kitten napping on a couch", "a rocket launch at night"]
    v = outputs(minilm, texts)
    assert all(x.shape == (384,) and x.dtype == np.float32 for x in v)
    np.testing.assert_allclose([np.linalg.norm(x) for x in v], 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2] + 0.3
    for t, x in zip(texts, v, strict=True):
        np.testing.assert_allclose(outputs(minilm, [t])[0], x, atol=1e-5)
    res = outputs(minilm, ["  ", 3, texts[0]])
    assert [getattr(r, "reason", None) for r in res[:2]] == ["empty_text", "bad_text"]
    np.testing.assert_allclose(res[2], v[0], atol=1e-5)


def test_minilm_caption_retrieval_on_corpus(minilm) -> None:  # noqa: ANN001
    """Styled captions find their own subject's plain caption (real sidecar text)."""
    sample = corpus_sample(n_subjects=8)
    plain = {r["subject"]: r["caption"] for _, r in sample}
    subjects = sorted(plain)
    styled = [(r["subject"], r["styled_caption"]) for _, r in sample]
    p = np.stack(outputs(minilm, [plain[s] for s in subjects]))
    q = np.stack(outputs(minilm, [c for _, c in styled]))
    hits = [subjects[int(np.argmax(p @ qi))] == s for (s, _), qi in zip(styled, q, strict=True)]
    print(f"MiniLM styled->plain caption top-1: {np.mean(hits):.3f} over {len(hits)}")
    assert np.mean(hits) > 0.9
