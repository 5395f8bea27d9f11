"""The video stream: order sensitivity, clip averaging, channel statistics, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backbones.video import Conv3dTemporal, FrameMean, clip_map_shape
from model.build import build_method
from model.config import ConfigError, config_from_dict
from model.streams import VideoStream
from model.video_features import channel_statistics

SHAPE = (1, 6, 16, 3, 3)  # clips, frames, C, h, w: small, so the tests stay fast


def stream(temporal: str, shape: tuple[int, int, int, int, int] = SHAPE) -> VideoStream:
    torch.manual_seed(0)
    channels = shape[2]
    net = Conv3dTemporal(channels, 8, 2, 2) if temporal == "conv3d" else FrameMean(channels)
    return VideoStream(shape, net, [32], 16, 0.0).eval()


def maps(n: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(np.prod(shape)), generator=gen) * 6


def reversed_in_time(x: torch.Tensor, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    clips, frames = shape[:2]
    return x.reshape(len(x), clips, frames, -1).flip(2).reshape(len(x), -1)


def test_conv3d_stream_sees_frame_order_and_the_mean_baseline_does_not() -> None:
    x = maps(5)
    with torch.no_grad():
        conv, mean = stream("conv3d"), stream("mean")
        assert (conv(x) - conv(reversed_in_time(x))).abs().min() > 1e-4  # every clip changes
        torch.testing.assert_close(mean(x), mean(reversed_in_time(x)))
        # Shuffling frames is not a no-op either (time bins keep coarse order).
        shuffled = x.reshape(5, 1, 6, -1)[:, :, [3, 0, 5, 1, 4, 2]].reshape(5, -1)
        assert (conv(x) - conv(shuffled)).abs().max() > 1e-3


def test_mean_baseline_is_the_mean_of_standardised_per_frame_pooled_features() -> None:
    s = stream("mean")
    mean, std = torch.rand(16) + 1, torch.rand(16) + 0.5
    s.set_standardization(mean, std)
    x = maps(3)
    pooled = x.reshape(3, 6, 16, 9).mean(dim=(1, 3))
    with torch.no_grad():
        want = s.hash(s.body((pooled - mean) / std))
        torch.testing.assert_close(s(x), want)


def test_several_clips_are_averaged_into_one_code() -> None:
    two = (2, 6, 16, 3, 3)
    s1, s2 = stream("conv3d"), stream("conv3d", two)
    s2.load_state_dict(s1.state_dict())
    x = maps(4)
    with torch.no_grad():
        torch.testing.assert_close(s2(torch.cat([x, x], dim=1)), s1(x))  # equal clips
        y = maps(4, seed=1)
        torch.testing.assert_close(
            s2.temporal(_volume(torch.cat([x, y], 1), two)).reshape(4, 2, -1).mean(1),
            (s1.temporal(_volume(x, SHAPE)) + s1.temporal(_volume(y, SHAPE))) / 2,
        )


def _volume(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    _, frames, c, h, w = shape
    return x.reshape(-1, frames, c, h, w).transpose(1, 2)


def test_channel_statistics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 2, 2)
    x = rng.normal(size=(10, int(np.prod(shape)))).astype(np.float16)
    rows = np.array([0, 2, 3, 7, 9])
    mean, std = channel_statistics(x, rows, shape, chunk=2)
    per_channel = x[rows].astype(np.float64).reshape(5, 6, 4, 4).transpose(2, 0, 1, 3)
    per_channel = per_channel.reshape(4, -1)
    np.testing.assert_allclose(mean.numpy(), per_channel.mean(1), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), per_channel.std(1), rtol=1e-4)


def test_build_method_makes_the_configured_video_stream() -> None:
    config = config_from_dict(
        {"video": {"size": 64, "frames": 4, "clips": 2, "width": 8, "blocks": 1, "hidden": [16]}}
    )
    shape = clip_map_shape("efficientnet-lite0", 64, 4, 2)
    assert shape == (2, 4, 1280, 2, 2)
    dims = {"video": int(np.prod(shape)), "text": 5}
    method = build_method(config, dims, {"video": "clip", "text": "bag_of_words"}, 3, False)
    video = method.stream("video")
    assert isinstance(video, VideoStream) and isinstance(video.temporal, Conv3dTemporal)
    assert video.map_shape == shape
    with torch.no_grad():
        assert method.eval().encode("video", maps(2, shape)).shape == (2, 32)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"temporal": "lstm"}, "video.temporal must be 'conv3d' or 'mean'"),
        ({"frames": 0}, "video.frames must be at least 1"),
        ({"clips": 0}, "video.clips must be at least 1"),
        ({"frames": 2, "time_bins": 4}, r"video.time_bins \(4\) exceeds video.frames"),
        ({"size": 16}, "video.size must be between 32 and 1024"),
        ({"hidden": ["wide"]}, "must be an integer"),
    ],
)
def test_bad_video_config_is_refused(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"video": override})
