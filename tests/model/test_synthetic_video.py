"""The synthetic video-text dataset: seeded, truthful captions, order pairs share their frames."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bundle.clips import decode_clip
from bundle.text import tokenize
from model.data.manifest import load_manifest
from model.data.synthetic_video import (
    CLASS_BY_NAME,
    CLASSES,
    COLOURS,
    LABEL_NAMES,
    ORDER_PAIRS,
    generate_video_dataset,
    make_video_scene,
    write_clip,
)

SIZE, FRAMES = 64, 8


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synvid") / "a"
    return generate_video_dataset(out, n=60, seed=3, size=SIZE, frames_per_clip=FRAMES)


def _files(manifest: Path) -> dict[str, bytes]:
    root = manifest.parent
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_half_the_classes_differ_only_in_order() -> None:
    assert len(ORDER_PAIRS) * 2 * 2 == len(CLASSES) == len(set(LABEL_NAMES))
    identities = {(c.colour, c.shape) for c in CLASSES}
    assert len(identities) == len(CLASSES) - len(ORDER_PAIRS)  # pairs share one identity
    for forward, backward in ORDER_PAIRS:
        a, b = CLASS_BY_NAME[forward], CLASS_BY_NAME[backward]
        assert (a.colour, a.shape, a.motion) == (b.colour, b.shape, b.motion)


def test_same_seed_same_bytes_other_seed_differs(written: Path, tmp_path: Path) -> None:
    again = generate_video_dataset(tmp_path / "b", n=60, seed=3, size=SIZE, frames_per_clip=FRAMES)
    other = generate_video_dataset(tmp_path / "c", n=60, seed=4, size=SIZE, frames_per_clip=FRAMES)
    assert _files(again) == _files(written)
    assert len(_files(written)) == 62  # 60 clips, generator.json and the manifest
    differing = [k for k, v in _files(other).items() if _files(written).get(k) != v]
    assert len(differing) > 50


def test_second_call_reuses_the_files(written: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in written.parent.rglob("*") if p.is_file()}
    again = generate_video_dataset(written.parent, n=60, seed=3, size=SIZE, frames_per_clip=FRAMES)
    assert again == written
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_other_arguments_regenerate_and_drop_stale_clips(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_video_dataset(out, n=12, seed=0, size=32, frames_per_clip=4)
    manifest = generate_video_dataset(out, n=9, seed=0, size=32, frames_per_clip=4)
    assert len(load_manifest(manifest)) == 9
    assert len(list((out / "videos").glob("*.mp4"))) == 9


def test_manifest_loads_with_splits_over_classes(written: Path) -> None:
    with written.open(newline="") as f:
        assert next(csv.reader(f)) == ["id", "video", "text", "labels", "split"]
    data = load_manifest(written)
    assert len(data) == 60 and data.modalities == ("video", "text")
    assert not data.multi_label
    assert set(data.label_names) == set(LABEL_NAMES)  # 60 clips: every class three times
    assert sorted(data.splits) == ["database"] * 18 + ["query"] * 6 + ["train"] * 36
    # Round-robin over classes: the 6 queries come from 6 different classes.
    queries = data.labels[[s == "query" for s in data.splits]]
    assert queries.sum(axis=0).max() == 1


def test_captions_name_the_label(written: Path) -> None:
    data = load_manifest(written)
    for text, row in zip(data.texts, data.labels, strict=True):
        cls = CLASS_BY_NAME[data.label_names[int(row.argmax())]]
        words = set(tokenize(text))
        assert cls.shape in words and cls.colour in words, text
        if cls.motion == "colour":
            assert "yellow" in words, text
        assert not (words & set(COLOURS)) - {"purple", "yellow", cls.colour}, text
        verbs = {tokenize(p.split("{")[0])[0] for p in cls.phrases}
        assert words & verbs, text


def test_order_pair_captions_differ_as_bags_of_words() -> None:
    for forward, backward in ORDER_PAIRS:
        vocab = [
            {w for p in CLASS_BY_NAME[name].phrases for w in tokenize(p.format(speed=""))}
            for name in (forward, backward)
        ]
        # Every phrase of a class has a word that no phrase of its partner has.
        for name, own, other in ((forward, *vocab), (backward, *vocab[::-1])):
            for phrase in CLASS_BY_NAME[name].phrases:
                assert set(tokenize(phrase.format(speed=""))) - other, (name, phrase)
            assert own != other


def test_every_clip_decodes_to_its_rendered_frames(written: Path) -> None:
    data = load_manifest(written)
    for i, (path, row) in enumerate(zip(data.video_paths, data.labels, strict=True)):
        out = decode_clip(path, frames=FRAMES, size=SIZE)
        assert out.shape == (1, FRAMES, 3, SIZE, SIZE)
        label = data.label_names[int(row.argmax())]
        scene = make_video_scene(label, np.random.default_rng([3, i]), SIZE, FRAMES)
        # Lossless H.264 in 4:4:4; only the RGB <-> YUV conversion rounds.
        diff = np.abs(out[0].astype(int) - scene.frames.transpose(0, 3, 1, 2).astype(int))
        assert diff.max() <= 2, path


@pytest.mark.parametrize(("forward", "backward"), ORDER_PAIRS)
def test_order_pairs_hold_the_same_frames_reversed(forward, backward, tmp_path) -> None:
    decoded = {}
    for name in (forward, backward):
        scene = make_video_scene(name, np.random.default_rng(11), SIZE, FRAMES)
        path = write_clip(tmp_path / f"{name}.mp4", scene.frames, fps=8)
        decoded[name] = decode_clip(path, frames=FRAMES, size=SIZE)[0]
    a, b = decoded[forward], decoded[backward]
    np.testing.assert_array_equal(a, b[::-1])  # the same frames, bit for bit
    assert not np.array_equal(a, b)  # in a different order
    assert len({f.tobytes() for f in a}) >= 2
    # What a frame-averaging model sees is identical; twice as many samples changes nothing.
    np.testing.assert_array_equal(a.mean(axis=0), b.mean(axis=0))
    twice = decode_clip(tmp_path / f"{backward}.mp4", frames=2 * FRAMES, size=SIZE)[0]
    np.testing.assert_array_equal(np.sort(twice[::2], axis=0), np.sort(b, axis=0))


def _object_mask(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(s, s) pixels within a small distance of the object's colour."""
    diff = frame.astype(np.int32) - np.asarray(rgb, dtype=np.int32)[:, None, None]
    return np.abs(diff).max(axis=0) < 40


def _centroids(frames: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    out = []
    for frame in frames:
        ys, xs = np.nonzero(_object_mask(frame, rgb))
        out.append((xs.mean(), ys.mean(), xs.size))
    return np.asarray(out)


def _clip(name: str, seed: int = 5) -> np.ndarray:
    scene = make_video_scene(name, np.random.default_rng(seed), SIZE, FRAMES)
    return scene.frames.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frames_show_what_the_label_says(seed: int) -> None:
    x = _centroids(_clip("circle_rightwards", seed), COLOURS["red"])[:, 0]
    assert (np.diff(x) > 0).all()
    y = _centroids(_clip("square_rises", seed), COLOURS["blue"])[:, 1]
    assert (np.diff(y) < 0).all()  # image rows grow downwards
    area = _centroids(_clip("triangle_shrinks", seed), COLOURS["green"])[:, 2]
    assert area[0] > 4 * area[-1]
    star = [_object_mask(f, COLOURS["white"]).sum() for f in _clip("star_appears", seed)]
    assert star[0] == 0 and star[-1] > 100
    cross = _clip("cross_darkens", seed)
    assert _object_mask(cross[0], COLOURS["yellow"]).sum() > 100
    assert _object_mask(cross[-1], COLOURS["purple"]).sum() > 100


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n must be at least 3"):
        generate_video_dataset(tmp_path, n=2)
    with pytest.raises(ValueError, match="query_fraction"):
        generate_video_dataset(tmp_path, n=10, query_fraction=0.7, database_fraction=0.4)
