"""load_manifest on tiny CSV and JSONL manifests with real PNG images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.manifest import load_manifest
from model.data.records import DataError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (8, 8), color).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


def write_csv(folder: Path, *lines: str, name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(folder: Path, *records: dict | str, name: str = "m.jsonl") -> Path:
    path = folder / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEADER = "id,image,text,labels,split"


def assert_at(err: DataError, row: int, line: int) -> None:
    """The error names data row `row` and file line `line`, in its fields and its message."""
    assert (err.row, err.line) == (row, line)
    assert f"row {row} (line {line})" in str(err)


def test_csv_happy_path(folder: Path) -> None:
    path = write_csv(
        folder,
        HEADER,
        "a,img/0.png,a red square,red|warm,train",
        'b,img/1.png,"green, with a comma",green,query',
        f"c,{folder / 'img' / '2.png'},blue,blue|cold, Database ",
    )
    data = load_manifest(path)
    assert data.ids == ["a", "b", "c"]
    assert data.label_names == ["blue", "cold", "green", "red", "warm"]
    np.testing.assert_array_equal(data.labels, [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert data.labels.dtype == np.uint8
    assert data.multi_label
    assert data.texts == ["a red square", "green, with a comma", "blue"]
    assert data.image_paths == [folder / "img" / f"{i}.png" for i in range(3)]
    assert data.splits == ["train", "query", "database"]
    assert data.video_paths is None
    assert data.modalities == ("image", "text")


def test_jsonl_happy_path_with_given_label_names(folder: Path) -> None:
    path = write_jsonl(
        folder,
        {"id": 7, "image": "img/0.png", "labels": ["red"]},
        "",
        {"id": "x", "image": "img/1.png", "labels": "green"},
    )
    data = load_manifest(path, label_names=["green", "blue", "red"])
    assert data.ids == ["7", "x"]
    assert data.label_names == ["green", "blue", "red"]
    np.testing.assert_array_equal(data.labels, [[0, 0, 1], [1, 0, 0]])
    assert not data.multi_label
    assert data.texts is None and data.splits is None
    assert data.modalities == ("image",)


def test_video_paths_unchecked(folder: Path) -> None:
    path = write_csv(folder, "id,video,labels", "v1,clips/v1.mp4,run")
    data = load_manifest(path, check_files=False)
    assert data.video_paths == [folder / "clips" / "v1.mp4"]
    assert data.modalities == ("video",)


def test_malformed_csv_field_count(folder: Path) -> None:
    path = write_csv(
        folder, HEADER, "a,img/0.png,t,red,train", "b,img/1.png,t, with comma,red,train"
    )
    with pytest.raises(DataError, match="6 fields but the header has 5") as e:
        load_manifest(path)
    assert_at(e.value, 2, 3)


def test_malformed_csv_quoting(folder: Path) -> None:
    path = write_csv(folder, HEADER, 'a,img/0.png,"bad"quote,red,train')
    with pytest.raises(DataError, match="malformed CSV") as e:
        load_manifest(path)
    assert_at(e.value, 1, 2)


def test_malformed_json_line(folder: Path) -> None:
    path = write_jsonl(
        folder, {"id": "a", "text": "t", "labels": ["x"]}, "", '{"id": "b", "text": "t",'
    )
    with pytest.raises(DataError, match="malformed JSON") as e:
        load_manifest(path)
    assert_at(e.value, 2, 3)


def test_json_line_nested_too_deeply(folder: Path) -> None:
    # Was a RecursionError traceback out of json.loads.
    nested = "[" * 100_000 + "]" * 100_000
    path = write_jsonl(folder, {"id": "a", "text": "t", "labels": ["x"]}, f'{{"id": {nested}}}')
    with pytest.raises(DataError, match="malformed JSON: nested too deeply") as e:
        load_manifest(path)
    assert_at(e.value, 2, 2)


def test_json_line_not_an_object(folder: Path) -> None:
    path = write_jsonl(folder, '["a", "t"]')
    with pytest.raises(DataError, match="expected a JSON object, got list") as e:
        load_manifest(path)
    assert_at(e.value, 1, 1)


def test_missing_required_column(folder: Path) -> None:
    path = write_csv(folder, "text,labels", "x,y")
    with pytest.raises(DataError, match="missing required column 'id'"):
        load_manifest(path)


def test_a_manifest_without_labels_loads_unlabelled(folder: Path) -> None:
    # Labels are optional: a method that needs none (djsrh) trains on such a manifest.
    data = load_manifest(write_csv(folder, "id,text", "a,a red car", "b,a blue sky"))
    assert not data.labelled
    assert data.texts == ["a red car", "a blue sky"]


def test_no_modality_column(folder: Path) -> None:
    path = write_csv(folder, "id,labels", "a,red")
    with pytest.raises(DataError, match="at least one of the columns 'image', 'video', 'text'"):
        load_manifest(path)


def test_duplicate_id(folder: Path) -> None:
    path = write_csv(folder, "id,text,labels", "a,t,red", "b,t,red", "a,t,red")
    with pytest.raises(DataError, match="duplicate id 'a' \\(first used at row 1\\)") as e:
        load_manifest(path)
    assert_at(e.value, 3, 4)


def test_missing_image_file(folder: Path) -> None:
    path = write_csv(folder, "id,image,labels", "a,img/0.png,red", "b,img/nope.png,red")
    with pytest.raises(DataError, match="image file not found: .*nope.png") as e:
        load_manifest(path)
    assert_at(e.value, 2, 3)


def test_empty_text(folder: Path) -> None:
    path = write_jsonl(
        folder, {"id": "a", "text": "t", "labels": "x"}, {"id": "b", "text": "  ", "labels": "x"}
    )
    with pytest.raises(DataError, match="empty 'text'") as e:
        load_manifest(path)
    assert_at(e.value, 2, 2)


def test_text_missing_from_one_jsonl_row(folder: Path) -> None:
    path = write_jsonl(folder, {"id": "a", "text": "t", "labels": "x"}, {"id": "b", "labels": "x"})
    with pytest.raises(DataError, match="empty 'text'") as e:
        load_manifest(path)
    assert_at(e.value, 2, 2)


def test_unknown_label(folder: Path) -> None:
    path = write_csv(folder, "id,text,labels", "a,t,cat", "b,t,dog|catt")
    with pytest.raises(
        DataError, match="unknown label 'catt' \\(did you mean 'cat'\\?\\); the known labels"
    ) as e:
        load_manifest(path, label_names=["cat", "dog"])
    assert_at(e.value, 2, 3)


@pytest.mark.parametrize("labels", ["", "|", " | "])
def test_no_labels(folder: Path, labels: str) -> None:
    path = write_csv(folder, "id,text,labels", "a,t,cat", f"b,t,{labels}")
    with pytest.raises(DataError, match="no labels") as e:
        load_manifest(path)
    assert_at(e.value, 2, 3)


def test_no_labels_jsonl_empty_list(folder: Path) -> None:
    path = write_jsonl(folder, {"id": "a", "text": "t", "labels": []})
    with pytest.raises(DataError, match="no labels") as e:
        load_manifest(path)
    assert_at(e.value, 1, 1)


def test_unknown_split(folder: Path) -> None:
    path = write_csv(folder, "id,text,labels,split", "a,t,cat,train", "b,t,cat,tst")
    with pytest.raises(
        DataError, match="unknown split 'tst'; use one of: train, val, query, database, test"
    ) as e:
        load_manifest(path)
    assert_at(e.value, 2, 3)


def test_wrong_type_in_jsonl(folder: Path) -> None:
    path = write_jsonl(folder, {"id": "a", "text": 3, "labels": "x"})
    with pytest.raises(DataError, match="'text' must be a string, got int") as e:
        load_manifest(path)
    assert_at(e.value, 1, 1)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_no_rows(folder: Path, suffix: str) -> None:
    path = folder / f"m{suffix}"
    path.write_text("id,text,labels\n" if suffix == ".csv" else "\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        load_manifest(path)


def test_unsupported_suffix_and_missing_file(folder: Path) -> None:
    with pytest.raises(DataError, match="use .csv or .jsonl"):
        load_manifest(write_csv(folder, "id,text,labels", "a,t,x", name="m.tsv"))
    with pytest.raises(DataError, match="manifest file not found"):
        load_manifest(folder / "absent.csv")
    # The data folder given instead of the file in it was "manifest file not found" too.
    with pytest.raises(DataError, match="is a folder; give the manifest file"):
        load_manifest(folder)


def test_unknown_column_is_reported(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(folder, "id,imgae,text,labels", "a,img/0.png,t,x")
    data = load_manifest(path)
    assert data.image_paths is None
    assert "ignoring unknown column(s) imgae" in caplog.text
