"""Our plain-torch EfficientNet-Lite0 against its checkpoint and the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backbones.efficientnet import (
    FEATURE_DIM,
    EfficientNetLite,
    load_pretrained,
    pretrained_weights_path,
    same_pad,
)
from model.data.images import prepare_image
from model.data.synthetic import make_scene
from model.hashing import PixelNormalize

NAME = "efficientnet-lite0"


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(pretrained_weights_path(NAME), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ours() -> EfficientNetLite:
    return load_pretrained(NAME)


def test_checkpoint_loads_strictly(checkpoint: dict[str, torch.Tensor], ours: EfficientNetLite):
    trunk = {k: v for k, v in checkpoint.items() if not k.startswith("_fc.")}
    # Only the ImageNet classifier is left out; every other tensor has a home.
    assert sorted(set(checkpoint) - set(trunk)) == ["_fc.bias", "_fc.weight"]
    result = EfficientNetLite(NAME).load_state_dict(trunk, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in ours.state_dict().items():
        assert torch.equal(value, trunk[key]), key
    assert not ours.training


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        # (top, bottom, left, right): TF puts the odd pixel at the bottom/right.
        (224, 3, 2, (0, 1, 0, 1)),
        (129, 3, 2, (1, 1, 1, 1)),
        (56, 5, 2, (1, 2, 1, 2)),
        (28, 5, 1, (2, 2, 2, 2)),
        (7, 3, 1, (1, 1, 1, 1)),
        (14, 1, 1, (0, 0, 0, 0)),
        (5, 3, 2, (1, 1, 1, 1)),
        (6, 3, 2, (0, 1, 0, 1)),
    ],
)
def test_same_pad(size: int, kernel: int, stride: int, pads: tuple[int, int, int, int]) -> None:
    x = torch.ones(1, 1, size, size)
    y = same_pad(x, kernel, stride)
    top, bottom, left, right = pads
    assert y.shape[-2:] == (size + top + bottom, size + left + right)
    # The original block sits at the offset, surrounded by zeros.
    assert torch.equal(y[..., top : top + size, left : left + size], x)
    assert float(y.sum()) == size * size
    # TF 'SAME': the convolution's output size is ceil(size / stride).
    out = torch.nn.functional.conv2d(y, torch.ones(1, 1, kernel, kernel), stride=stride)
    assert out.shape[-1] == -(-size // stride)


def test_same_pad_rectangular() -> None:
    y = same_pad(torch.ones(1, 1, 9, 12), kernel=3, stride=2)
    # h: ceil(9/2)=5 -> (5-1)*2+3-9 = 2 -> (1, 1); w: 6 -> (6-1)*2+3-12 = 1 -> (0, 1)
    assert y.shape[-2:] == (11, 13)
    assert torch.equal(y[..., 1:10, 0:12], torch.ones(1, 1, 9, 12))


def _reference(size: int):
    package = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="reference package efficientnet_lite_pytorch missing"
    )
    # image_size fixes the reference's static padding; it must match the input.
    net = package.EfficientNet.from_pretrained(
        NAME, weights_path=str(pretrained_weights_path(NAME)), image_size=size
    )
    return net.eval()


@pytest.mark.parametrize("size", [224, 128, 129])
def test_matches_reference_implementation(ours: EfficientNetLite, size: int) -> None:
    ref = _reference(size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        expected = ref.extract_features(x).mean((-2, -1))
        got = ours(x)
        logits = ref(x)
        head_on_ours = ref._fc(got)
    assert got.shape == (2, FEATURE_DIM)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Our features with the checkpoint's classifier give the reference's logits.
    torch.testing.assert_close(head_on_ours, logits, atol=1e-4, rtol=0)


def test_classifier_head_on_our_features_is_a_distribution(
    checkpoint: dict[str, torch.Tensor], ours: EfficientNetLite
) -> None:
    rng = np.random.default_rng(0)
    pixels = np.stack([prepare_image(make_scene(rng, 96).image, 224) for _ in range(2)])
    norm = PixelNormalize(ours.spec.mean, ours.spec.std)
    with torch.inference_mode():
        features = ours(norm(torch.from_numpy(pixels)))
    # relu6 then average pooling: every feature lies in [0, 6].
    assert features.min() >= 0 and features.max() <= 6
    assert not torch.allclose(features[0], features[1])
    logits = features @ checkpoint["_fc.weight"].T + checkpoint["_fc.bias"]
    probs = torch.softmax(logits, dim=1)
    assert probs.shape == (2, 1000)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    # Not degenerate: neither uniform nor a single class with all the mass.
    assert (probs.max(1).values > 5 / 1000).all() and (probs.max(1).values < 1 - 1e-6).all()
