"""controlnet-aux annotators (HED, PiDiNet, lineart) from user-supplied weight files.

No annotator weights exist offline, so each test builds controlnet-aux's own network with random
weights, saves it in the layout of lllyasviel/Annotators, and loads it back through the handler. The
handler must give what controlnet-aux's own `from_pretrained` + detector give on the same folder.
"""

from __future__ import annotations

import pickle
import warnings

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from mmdata import weights
from mmdata.models import make_handler
from mmdata.models.annotators import ControlNetAnnotatorHandler
from mmdata.models.base import is_reject
from mmdata.runner import LocalDirectRunner

from .conftest import infer, outputs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector
    from controlnet_aux.lineart import Generator, LineartDetector
    from controlnet_aux.pidi import PidiNetDetector
    from controlnet_aux.pidi.model import pidinet


def _save_random(kind: str, folder) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "hed":
        torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
    elif kind == "pidinet":
        # The released checkpoint is a training checkpoint of a DataParallel model.
        state = {"module." + k: v for k, v in pidinet().state_dict().items()}
        torch.save({"epoch": 0, "state_dict": state}, folder / "table5_pidinet.pth")
    else:
        torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model.pth")
        torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model2.pth")


def _reference(kind: str, folder):  # noqa: ANN001, ANN202
    """controlnet-aux's own loader on the same folder."""
    cls = {"hed": HEDdetector, "pidinet": PidiNetDetector, "lineart": LineartDetector}[kind]
    return cls.from_pretrained(str(folder))


@pytest.fixture(scope="module", params=["hed", "pidinet", "lineart"])
def annotator(request, tmp_path_factory):  # noqa: ANN001, ANN201
    kind = request.param
    folder = tmp_path_factory.mktemp(f"annotators-{kind}")
    _save_random(kind, folder)
    handler = ControlNetAnnotatorHandler(annotator=kind, weights_path=str(folder))
    return kind, folder, handler, handler.load_model()


def test_matches_controlnet_aux_own_loader(annotator, photos, icons) -> None:  # noqa: ANN001
    kind, folder, handler, model = annotator
    images = [photos["chelsea"], photos["coffee"], icons[("face", "flat")]]
    got = outputs((handler, model), images)
    ref = _reference(kind, folder)
    for img, edge in zip(images, got, strict=True):
        assert edge.dtype == np.float32 and edge.shape == img.shape[:2]
        assert 0.0 <= edge.min() and edge.max() <= 1.0
        rgb = handler.prepare(img)
        res = handler._resolution(rgb)
        expected = ref(rgb, detect_resolution=res, image_resolution=res, output_type="np")
        expected = expected[:, :, 0].astype(np.float32) / 255.0
        if expected.shape == edge.shape:
            np.testing.assert_allclose(edge, expected, atol=1 / 255)
        else:
            import cv2

            h, w = edge.shape
            expected = cv2.resize(expected, (w, h), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(edge, expected, atol=1 / 255)


def test_batch_of_one_equals_batch_of_n_and_deterministic(annotator, photos) -> None:  # noqa: ANN001
    _, _, handler, model = annotator
    images = [photos["astronaut"], photos["rocket"], photos["chelsea"]]
    batch = outputs((handler, model), images)
    singles = [outputs((handler, model), [im])[0] for im in images]
    again = outputs((handler, model), images)
    for a, b, c in zip(batch, singles, again, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_array_equal(a, c)


def test_small_or_broken_inputs_become_rejects(annotator) -> None:  # noqa: ANN001
    _, _, handler, model = annotator
    results = infer((handler, model), [np.zeros((4, 4, 3), np.uint8), "not an image"])
    assert [r.inference.reason for r in results] == ["too_small", "bad_image"]
    assert all(is_reject(r) for r in results)


def test_through_runinference(tmp_path, photos) -> None:  # noqa: ANN001
    _save_random("pidinet", tmp_path)
    handler = make_handler("controlnet-annotator", annotator="pidinet", weights_path=str(tmp_path))
    images = [photos["coffee"], np.zeros((3, 3), np.uint8), photos["rocket"]]

    def check(results) -> None:  # noqa: ANN001
        shapes = sorted(
            ("reject", r.inference.reason) if is_reject(r) else ("ok", r.inference.shape)
            for r in results
        )
        want = sorted(
            [("ok", photos["coffee"].shape[:2]), ("ok", photos["rocket"].shape[:2])]
            + [("reject", "too_small")]
        )
        assert shapes == want, shapes

    with TestPipeline(runner=LocalDirectRunner()) as p:
        out = p | beam.Create(images, reshuffle=False) | RunInference(handler)
        assert_that(out, check)


def test_missing_files_fail_clearly(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("MMDATA_CONTROLNET_LINEART_WEIGHTS", raising=False)
    with pytest.raises(weights.WeightsMissingError, match="controlnet-lineart"):
        ControlNetAnnotatorHandler(annotator="lineart").load_model()
    (tmp_path / "sk_model.pth").write_bytes(b"")
    with pytest.raises(weights.WeightsMissingError, match="sk_model2.pth"):
        ControlNetAnnotatorHandler(annotator="lineart", weights_path=str(tmp_path)).load_model()


def test_corrupt_or_unsafe_files_fail_clearly(tmp_path) -> None:  # noqa: ANN001
    _save_random("hed", tmp_path)
    path = tmp_path / "ControlNetHED.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # found by the format check of an unpinned file, before torch reads it
    with pytest.raises(weights.WeightsCorruptError, match="'controlnet-hed'.*truncated"):
        ControlNetAnnotatorHandler(annotator="hed", weights_path=str(tmp_path)).load_model()
    # A pickle that would run code on load is refused (weights_only=True), not executed.
    path.write_bytes(pickle.dumps(_Evil(str(tmp_path / "pwned"))))
    with pytest.raises(weights.WeightsError, match="cannot read annotator weights"):
        ControlNetAnnotatorHandler(annotator="hed", weights_path=str(path)).load_model()
    assert not (tmp_path / "pwned").exists()


def test_wrong_hash_fails_before_loading(tmp_path) -> None:  # noqa: ANN001
    _save_random("hed", tmp_path)
    handler = ControlNetAnnotatorHandler(
        annotator="hed", weights_path=str(tmp_path), weights_sha256="0" * 64
    )
    with pytest.raises(weights.WeightsHashError, match="controlnet-hed"):
        handler.load_model()


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))
