"""Fine-tuning the backbone's last blocks: split trunk, cached front maps, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones.efficientnet import TrunkFront, TrunkTail, load_pretrained, split_shape
from model.checkpoint import load_checkpoint
from model.config import ConfigError, config_from_dict
from model.data.images import load_image
from model.data.synthetic import write_synthetic_images
from model.export import export_bundle
from model.features import extract_image_features
from model.hashing import PixelNormalize
from model.train import train


def test_front_then_tail_equals_the_whole_trunk() -> None:
    net = load_pretrained("efficientnet-lite0")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    c, h, w = split_shape("efficientnet-lite0", 96, 2)
    with torch.no_grad():
        front = TrunkFront(net, 2)(x)
        split = TrunkTail(net, 2)(front.reshape(-1, c, h, w))
        assert torch.allclose(split, net(x), atol=1e-5)


def test_tail_blocks_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="tail_blocks"):
        TrunkFront(load_pretrained("efficientnet-lite0"), 0)


def test_front_maps_are_cached_under_their_own_key(tmp_path: Path) -> None:
    manifest = write_synthetic_images(tmp_path / "data", 4, seed=0)
    paths = sorted((tmp_path / "data" / "images").glob("*.png"))
    maps = extract_image_features(
        paths, backbone="efficientnet-lite0", size=64, cache_dir=tmp_path / "cache", tail_blocks=1
    )
    pooled = extract_image_features(
        paths, backbone="efficientnet-lite0", size=64, cache_dir=tmp_path / "cache"
    )
    assert manifest.exists()
    c, h, w = split_shape("efficientnet-lite0", 64, 1)
    assert maps.shape == (4, c * h * w) and pooled.shape == (4, 1280)
    net = load_pretrained("efficientnet-lite0")
    pixels = torch.from_numpy(np.stack([load_image(p, 64) for p in paths]))
    with torch.no_grad():
        x = PixelNormalize(net.spec.mean, net.spec.std)(pixels)
        assert np.allclose(maps, TrunkFront(net, 1)(x).numpy(), atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "efficientnet-lite0-64-front1.sqlite",
        "efficientnet-lite0-64-plain.sqlite",
    ]


def test_flip_with_fine_tuning_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flip"):
        extract_image_features(
            [], backbone="efficientnet-lite0", size=64, cache_dir=tmp_path, flip=True, tail_blocks=1
        )


def test_fine_tuned_run_trains_the_tail_and_exports_bit_identical(tmp_path: Path) -> None:
    manifest = write_synthetic_images(tmp_path / "data", 40, seed=3, query_fraction=0.25)
    config = config_from_dict(
        {
            "bits": 16,
            "data": {"path": str(manifest)},
            "image": {
                "size": 64,
                "hidden": [32],
                "cache_dir": str(tmp_path / "cache"),
                "finetune_blocks": 1,
            },
            "text": {"hidden": [32]},
            "train": {"epochs": 2, "batch_size": 8, "eval_every": 0},
        }
    )
    train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    pretrained = load_pretrained("efficientnet-lite0")
    trained = state["model"]["streams.image.tail.blocks.0._project_conv.weight"]
    assert not torch.equal(trained, pretrained._blocks[-1]._project_conv.weight)
    # Export verifies scripted == eager itself and refuses otherwise.
    bundle = export_bundle(tmp_path / "run", tmp_path / "bundle")
    assert (bundle / "image.pt").is_file()


@pytest.mark.parametrize(
    "image",
    [
        {"finetune_blocks": 1.5},
        {"finetune_blocks": -1},
        {"finetune_blocks": 17},
        {"finetune_blocks": 1, "flip_features": True},
    ],
)
def test_bad_finetune_settings_are_config_errors(image: dict) -> None:
    with pytest.raises(ConfigError, match="finetune_blocks"):
        config_from_dict({"image": image})
