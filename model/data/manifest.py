"""Load a user-written manifest (CSV or JSONL) of paired items into `PairedData`.

Fields (CSV header names or JSONL keys):

- ``id``: required, unique, non-empty.
- ``image`` / ``video``: a media path, relative to the manifest's folder unless absolute.
  When the column is present every row must fill it.
- ``text``: the paired text; when the column is present no row may leave it empty.
- ``labels``: optional (a method that needs labels, DSMHN, refuses a manifest without them;
  DJSRH reads none). When the column is present every row needs at least one label.
  CSV: ``|``-separated names; JSONL: a list of names or a ``|``-separated string.
- ``group``: optional; rows with the same value belong together (the five captions of one
  photo, a clip and its descriptions) and are each other's relevant items in evaluation by
  group. Without it each row is its own group.
- ``split``: optional, one of ``SPLIT_NAMES`` (see `model.data.splits.split_from_column`).

Every bad row is reported, the first `MAX_REPORTED_ROWS` of them in one error, so that a
manifest with ten missing images is fixed in one pass, not ten.

At least one of ``image``, ``video``, ``text`` must be present. Other columns are ignored
with a warning, so that a typo such as ``imgae`` does not pass silently.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.data.images import image_problem
from model.data.records import DataError, PairedData

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "query", "database", "test")
MEDIA_COLUMNS = ("image", "video")
KNOWN_COLUMNS = ("id", *MEDIA_COLUMNS, "text", "labels", "group", "split")
#: How many bad rows one error lists (all are counted).
MAX_REPORTED_ROWS = 20

# (1-based data row, 1-based line in the file, field -> raw value)
_Row = tuple[int, int, dict[str, Any]]
_Fail = Callable[[str], DataError]


def load_manifest(
    path: str | Path,
    label_names: Sequence[str] | None = None,
    check_files: bool = True,
) -> PairedData:
    """Parse and validate a manifest; `label_names` pins the label set (e.g. a trained model's)."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a folder; give the manifest file (CSV or JSONL) in it", path=path)
    if not path.is_file():
        raise DataError("manifest file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns, rows = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        columns, rows = _read_jsonl(path)
    else:
        raise DataError(f"unsupported manifest type {suffix!r}; use .csv or .jsonl", path=path)
    if not rows:
        raise DataError("no rows: the manifest has no data rows", path=path)
    _check_columns(path, columns)
    return _build(path, columns, rows, label_names, check_files)


def _read_csv(path: Path) -> tuple[list[str], list[_Row]]:
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError("empty file: expected a header row", path=path)
            columns = [c.strip() for c in header]
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            if dupes:
                raise DataError(f"duplicate column(s) in header: {', '.join(dupes)}", path=path)
            rows: list[_Row] = []
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise DataError(
                        f"malformed CSV ({e}); check quoting",
                        path=path,
                        row=len(rows) + 1,
                        line=reader.line_num,
                    ) from e
                if not values:
                    continue  # blank line
                if len(values) != len(columns):
                    raise DataError(
                        f"malformed CSV: {len(values)} fields but the header has "
                        f"{len(columns)}; quote values that contain commas",
                        path=path,
                        row=len(rows) + 1,
                        line=reader.line_num,
                    )
                rows.append(
                    (len(rows) + 1, reader.line_num, dict(zip(columns, values, strict=True)))
                )
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e}); save the manifest as UTF-8", path=path) from e
    return columns, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[_Row]]:
    rows: list[_Row] = []
    columns: dict[str, None] = {}  # ordered set: union of keys over all rows
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                row_no = len(rows) + 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"malformed JSON ({e.msg} at column {e.colno}); each line must be one "
                        "JSON object",
                        path=path,
                        row=row_no,
                        line=line_no,
                    ) from e
                except RecursionError:  # json's decoder recurses once per nesting level
                    raise DataError(
                        "malformed JSON: nested too deeply; each line must be one JSON object "
                        "of strings and lists",
                        path=path,
                        row=row_no,
                        line=line_no,
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(
                        f"malformed JSONL: expected a JSON object, got {type(obj).__name__}",
                        path=path,
                        row=row_no,
                        line=line_no,
                    )
                columns.update(dict.fromkeys(obj))
                rows.append((row_no, line_no, obj))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e}); save the manifest as UTF-8", path=path) from e
    return list(columns), rows


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    if "id" not in columns:
        raise DataError(
            f"missing required column 'id'; columns found: {', '.join(columns)}", path=path
        )
    if not any(c in columns for c in (*MEDIA_COLUMNS, "text")):
        raise DataError("needs at least one of the columns 'image', 'video', 'text'", path=path)
    unknown = [c for c in columns if c not in KNOWN_COLUMNS]
    if unknown:
        log.warning("%s: ignoring unknown column(s) %s", path, ", ".join(unknown))


def _build(
    path: Path,
    columns: Sequence[str],
    rows: list[_Row],
    label_names: Sequence[str] | None,
    check_files: bool,
) -> PairedData:
    if label_names is not None and len(set(label_names)) != len(label_names):
        raise ValueError("label_names contains duplicates")
    ids: list[str] = []
    first_row: dict[str, int] = {}
    row_labels: list[list[str]] = []
    texts: list[str] = []
    media: dict[str, list[Path | None]] = {c: [] for c in MEDIA_COLUMNS if c in columns}
    splits: list[str] = []
    groups: list[str] = []
    known = list(label_names) if label_names is not None else None
    known_set = set(known or ())

    bad_rows: list[DataError] = []
    for row_no, line_no, rec in rows:

        def fail(problem: str, row_no: int = row_no, line_no: int = line_no) -> DataError:
            return DataError(problem, path=path, row=row_no, line=line_no)

        try:
            item_id = _as_str(rec.get("id"), "id", fail, allow_int=True).strip()
            if not item_id:
                raise fail("empty 'id'; every row needs a unique id")
            if item_id in first_row:
                raise fail(f"duplicate id {item_id!r} (first used at row {first_row[item_id]})")
            first_row[item_id] = row_no
            _check_row(path, columns, rec, fail, known, known_set, check_files)
        except DataError as exc:
            bad_rows.append(exc)
            continue
        ids.append(item_id)
        if "labels" in columns:
            row_labels.append(_parse_labels(rec.get("labels"), fail))
        if "text" in columns:
            texts.append(_as_str(rec.get("text"), "text", fail))
        for col, paths in media.items():
            paths.append(_media_path(path, _as_str(rec.get(col), col, fail)))
        if "group" in columns:
            groups.append(_as_str(rec.get("group"), "group", fail, allow_int=True).strip())
        if "split" in columns:
            splits.append(_as_str(rec.get("split"), "split", fail).strip().lower())
    if bad_rows:
        raise _all_bad_rows(path, bad_rows)

    names_out = (
        list(label_names)
        if label_names is not None
        else sorted({n for names in row_labels for n in names})
    )
    column_of = {n: j for j, n in enumerate(names_out)}
    # Without a labels column: no label names and a (n, 0) matrix, so the data is unlabelled.
    labels = np.zeros((len(ids), len(names_out)), dtype=np.uint8)
    for i, names in enumerate(row_labels):
        labels[i, [column_of[n] for n in names]] = 1
    return PairedData(
        ids=ids,
        label_names=names_out,
        labels=labels,
        multi_label=bool((labels.sum(axis=1) > 1).any()),
        texts=texts if "text" in columns else None,
        image_paths=media.get("image"),
        video_paths=media.get("video"),
        splits=splits if "split" in columns else None,
        groups=groups if "group" in columns else None,
    )


def _check_row(
    path: Path,
    columns: Sequence[str],
    rec: dict[str, Any],
    fail: _Fail,
    known: list[str] | None,
    known_set: set[str],
    check_files: bool,
) -> None:
    """Raise the first problem of one row's fields (after its id), if it has one."""
    if "labels" in columns:
        names = _parse_labels(rec.get("labels"), fail)
        if not names:
            raise fail("no labels; give at least one label name in 'labels' (separate with '|')")
        if known is not None:
            for name in names:
                if name not in known_set:
                    raise fail(_unknown_label(name, known))
    if "text" in columns and not _as_str(rec.get("text"), "text", fail).strip():
        raise fail("empty 'text'; every row needs its paired text")
    for col in MEDIA_COLUMNS:
        if col not in columns:
            continue
        value = _as_str(rec.get(col), col, fail).strip()
        if not value:
            raise fail(f"empty {col!r}; every row needs a {col} path")
        p = _media_path(path, value)
        if check_files and not p.is_file():
            raise fail(
                f"{col} file not found: {p} (relative paths are resolved against "
                f"the manifest's folder {path.parent})"
            )
        if check_files and col == "image":
            problem = image_problem(p)
            if problem is not None:
                raise fail(
                    f"image file {p} is not a readable image ({problem}); "
                    "replace the file or remove the row"
                )
    if "group" in columns and not _as_str(rec.get("group"), "group", fail, allow_int=True).strip():
        raise fail("empty 'group'; give every row a group (rows of one group belong together)")
    if "split" in columns:
        split = _as_str(rec.get("split"), "split", fail).strip().lower()
        if split not in SPLIT_NAMES:
            raise fail(f"unknown split {split!r}; use one of: {', '.join(SPLIT_NAMES)}")


def _media_path(manifest: Path, value: str) -> Path:
    p = Path(value.strip())
    return p if p.is_absolute() else manifest.parent / p


def _all_bad_rows(path: Path, bad_rows: list[DataError]) -> DataError:
    """One error for every bad row: the first `MAX_REPORTED_ROWS` listed, all counted."""
    if len(bad_rows) == 1:
        return bad_rows[0]
    shown = bad_rows[:MAX_REPORTED_ROWS]
    lines = [
        (f"row {e.row}" + (f" (line {e.line})" if e.line is not None else "") + f": {e.problem}")
        for e in shown
    ]
    more = len(bad_rows) - len(shown)
    listed = f"the first {len(shown)} listed" if more else "all listed"
    head = f"{len(bad_rows)} rows have problems ({listed}); fix them and load again:"
    tail = [f"... and {more} more"] if more else []
    return DataError("\n  ".join([head, *lines, *tail]), path=path)


def _as_str(value: Any, field: str, fail: _Fail, allow_int: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise fail(f"{field!r} must be a string, got {type(value).__name__}")


def _parse_labels(value: Any, fail: _Fail) -> list[str]:
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise fail("'labels' must be a list of strings or a '|'-separated string")
        pieces = value
    else:
        pieces = _as_str(value, "labels", fail).split("|")
    # dict.fromkeys: drop repeats but keep the order the user wrote.
    return list(dict.fromkeys(p.strip() for p in pieces if p.strip()))


def _unknown_label(name: str, label_names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, label_names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(label_names[:30]) + (", ..." if len(label_names) > 30 else "")
    return f"unknown label {name!r}{hint}; the known labels are: {shown}"
