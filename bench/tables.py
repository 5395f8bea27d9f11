"""Render bench results JSON as the Markdown tables of docs/results.md.

python bench/tables.py bench/results/accuracy-*.json          # print the tables
python bench/tables.py --write docs/results.md                 # regenerate every table there

Each file's kind is read from its content: `bench.accuracy` (accuracy-*.json),
`bench.text_encoders` (text_encoders.json), `bench.video accuracy` (video-*.json but
video-speed), a method's recorded run (djsrh-*.json), `bench.methods` (methods.json) and
`bench.search` (search*.json;
`PATH#1000000x64` picks one size's detailed table from a sweep). In a Markdown file, a table
is the text between `<!-- table: PATH -->` and `<!-- table: end -->`; `--write` replaces each
with PATH's rendering; tests/docs/test_results_tables.py checks docs/results.md holds
exactly that.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

CROSS = ("image->text", "text->image")
ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- table: end -->)", re.S)


def _accuracy(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    lines = [
        "| bits | split seed | image→text | text→image | image→image | text→text "
        "| continuous i→t / t→i | binary / continuous i→t, t→i | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        m, c, q = r["map"], r["continuous_map"], r["binary_to_continuous"]
        lines.append(
            f"| {r['bits']} | {r['split_seed']} | {m['image->text']:.3f} | {m['text->image']:.3f} "
            f"| {m['image->image']:.3f} | {m['text->text']:.3f} "
            f"| {c['image->text']:.3f} / {c['text->image']:.3f} "
            f"| {q['image->text']:.1%}, {q['text->image']:.1%} "
            f"| {r['train_seconds_recorded']:.0f} |"
        )
    return lines


_STREAMS = {"bag_of_words": "bag of words", "minilm": "MiniLM"}


def _text_encoders(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    lines = [
        "| split | bits | text stream | mAP i→t / t→i | R@1 / R@5 / R@10 i→t "
        "| R@1 / R@5 / R@10 t→i | continuous mAP i→t / t→i | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    bits = data.get("bits", "")
    for r in data["results"]:
        m, c, rec = r["map"], r["continuous_map"], r["recall"]
        at = {d: " / ".join(f"{rec[d][f'R@{k}']:.3f}" for k in (1, 5, 10)) for d in rec}
        lines.append(
            f"| {r['split_seed']} | {bits} | {_STREAMS.get(r['text_encoder'], r['text_encoder'])} "
            f"| {m['image->text']:.3f} / {m['text->image']:.3f} "
            f"| {at['image->text']} | {at['text->image']} "
            f"| {c['image->text']:.3f} / {c['text->image']:.3f} "
            f"| {r['train_seconds_recorded']:.0f} |"
        )
    return lines


_TEMPORAL = {"conv3d": "(2+1)-D (`conv3d`)", "mean": "frame mean (2-D baseline)"}


def _video(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    extra = any("map_val_and_test_queries" in r for r in data["results"].values())
    head = "| stream | video→text | text→video | video→video | queries / database | train s |"
    rule = "| --- | --- | --- | --- | --- | --- |"
    if extra:
        head += " video→text, text→video with val queries too |"
        rule += " --- |"
    lines = [head, rule]
    for name, r in data["results"].items():
        m = r["map"]
        row = (
            f"| {_TEMPORAL.get(name, name)} | {m['video->text']:.3f} | {m['text->video']:.3f} "
            f"| {m['video->video']:.3f} | {r['num_queries']} / {r['num_database']} "
            f"| {r['train_seconds_this_call']:.0f} |"
        )
        if extra:
            v = r["map_val_and_test_queries"]
            row += (
                f" {v['map']['video->text']:.3f}, {v['map']['text->video']:.3f} "
                f"({v['num_queries']} queries) |"
            )
        lines.append(row)
    return lines


def _ms(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    ms = seconds * 1000
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _search_one(r: dict[str, Any], on_gpu: bool) -> list[str]:
    lines = [
        f"{r['n']:,} items, {r['bits']} bits "
        f"(float32 baseline {r['dim_float']}-d, {r['float32_flat_ip']['bytes'] / 1e6:.0f} MB):",
        "",
        "| index | batch of 100 | one query (median) | batch vs float32 | recall@10 "
        "| memory vs float32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = r["float32_flat_ip"]
    gpu = "Gpu" if on_gpu else ""
    lines.append(
        f"| float32 `{gpu}IndexFlatIP` (baseline) | {_ms(base['batch100']['median_s'])} "
        f"| {base['single']['median_ms']:.3g} ms | 1× | | 1× |"
    )
    names = {
        "binary_flat_raw_faiss": f"`{gpu}IndexBinaryFlat`, raw FAISS",
        "binary_flat_wrapper": '`FaissHammingIndex(kind="flat"'
        + (", use_gpu=True" if on_gpu else "")
        + ")`",
    }
    for key, label in names.items():
        if key in r:
            x = r[key]
            lines.append(
                f"| {label} | {_ms(x['batch100']['median_s'])} | {x['single']['median_ms']:.3g} ms "
                f"| {x['speedup_batch_vs_float32']:,.3g}× | "
                f"| {x['memory_ratio_float32_over_this']:.1f}× smaller "
                f"({x['bytes'] / 1e6:.1f} MB) |"
            )
    ivf = r.get("binary_ivf_wrapper")
    for p in (ivf or {}).get("by_nprobe", []):
        lines.append(
            f"| `IndexBinaryIVF` ({ivf['nlist']:,} lists), nprobe {p['nprobe']} "
            f"| {_ms(p['batch100']['median_s'])} | {p['single']['median_ms']:.3g} ms "
            f"| {p['speedup_batch_vs_float32']:,.0f}× | {p['recall_at_10']:.4f} "
            f"| {ivf['memory_ratio_float32_over_this']:.1f}× smaller |"
        )
    return lines


def _search(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    on_gpu = "gpu" in data.get("mode", "")
    if pick:  # "NxBITS": the detailed table of one size
        n, bits = (int(v) for v in pick.split("x"))
        chosen = [r for r in data["results"] if (r["n"], r["bits"]) == (n, bits)]
        if not chosen:
            raise SystemExit(f"tables: {path} has no {n} items at {bits} bits")
        return _search_one(chosen[0], on_gpu)
    if len(data["results"]) == 1:
        lines = _search_one(data["results"][0], on_gpu)
        summary = data["summary"][0]
        if "raw_flat_speedup_batch_range" in summary:  # --rounds: interleaved rounds
            low, high = summary["raw_flat_speedup_batch_range"]
            lines += [
                "",
                f"Interleaved rounds: `FaissHammingIndex` / raw `IndexBinaryFlat` "
                f"{summary['wrapper_overhead_vs_raw_batch']:.2f}× (batch) and "
                f"{summary['wrapper_overhead_vs_raw_single']:.2f}× (single query), medians of "
                f"the per-round ratios; raw binary vs float32 {low:.1f}–{high:.1f}× across rounds.",
            ]
        return lines
    lines = [
        "| items | bits | float32 batch of 100 | raw `IndexBinaryFlat` | "
        '`FaissHammingIndex(kind="flat")` | memory vs float32 | IVF nprobe 16: recall@10, speed |',
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in data["summary"]:
        ivf = next((p for p in s["ivf"] if p["nprobe"] == 16), None)
        ivf_cell = (
            f"{ivf['recall_at_10']:.4f}, {ivf['speedup_batch_vs_float32']:,.0f}×" if ivf else "–"
        )
        lines.append(
            f"| {s['n']:,} | {s['bits']} | {_ms(s['float32_batch_ms'] / 1000)} "
            f"| {s['raw_flat_speedup_batch']:.3g}× | {s['wrapper_flat_speedup_batch']:.3g}× "
            f"| {s['memory_ratio_wrapper_flat']:.1f}× smaller | {ivf_cell} |"
        )
    return lines


def _direction(d: str) -> str:
    q, _, db = d.partition("->")
    return f"{q}→{db}"


#: A cell's four directions as (query, database): media is the photo, or the clip.
_MEDIA_DIRECTIONS = (("media", "text"), ("text", "media"), ("media", "media"), ("text", "text"))


def _media_of(cell: dict[str, Any]) -> str:
    return "video" if any(d.startswith("video") for d in cell["map"]) else "image"


def _pair(values: dict[str, float], media: str) -> str:
    """`media→text / text→media` of a by-direction mapping."""
    m2t, t2m = values.get(f"{media}->text"), values.get(f"text->{media}")
    if m2t is None or t2m is None:
        return ""
    return f"{m2t:.3f} / {t2m:.3f}"


def _methods(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    """bench.methods: a row per method x dataset x bits, a column per direction; why a cell
    is empty where it is; for a merge, the file (and so the command) behind every row."""
    merged = data.get("merged_from")
    files = {s["file"]: i for i, s in enumerate(merged or [], start=1)}
    lines = [
        "| dataset | bits | method | "
        + " | ".join(f"{q}→{db}" for q, db in _MEDIA_DIRECTIONS)
        + " | by group: mAP m→t / t→m | R@10 m→t / t→m | train s |"
        + (" from |" if merged else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- |" if merged else ""),
    ]
    not_run = 0
    for dataset, spec in data["datasets"].items():
        cells = [c for c in data["cells"] if c["dataset"] == dataset]
        # One call's file shows what it ran (its other cells are counted below); a merge
        # shows the whole matrix, gaps included.
        shown = merged or any(c["status"] == "result" for c in cells)
        for c in sorted(cells, key=lambda c: c["bits"]):  # stable: methods in registry order
            head = f"| {dataset} | {c['bits']} | {c['method']} "
            tail = " |" if merged else ""
            if c["status"] == "not_run":
                not_run += 1
                if merged:
                    lines.append(head + "| not run |" + " |" * 6 + tail)
                continue
            if not shown:
                continue
            if c["status"] == "not_applicable":
                lines.append(head + f"| not applicable: {c['reason']} |" + " |" * 6 + tail)
                continue
            media = _media_of(c)
            maps = [
                f"{c['map'][d]:.3f}"
                if (d := f"{q}->{db}".replace("media", media)) in c["map"]
                else "–"
                for q, db in _MEDIA_DIRECTIONS
            ]
            group = ("", "")
            if spec.get("by_group"):
                g = c["by_group"]
                group = (
                    _pair({d: r["map"] for d, r in g.items()}, media),
                    _pair(
                        {d: r["recall_at_k"].get("10", float("nan")) for d, r in g.items()}, media
                    ),
                )
            source = f" {files[c['source']]} |" if merged else ""
            lines.append(
                head + "| " + " | ".join(maps) + f" | {group[0]} | {group[1]} "
                f"| {c['train_seconds_recorded']:.0f} |" + source
            )
    lines += [
        "",
        "Binary codes, mAP@all with Hamming ranking; media is the photo, or the clip on "
        "synthetic-video. By group: a photo's own captions are its relevant items (and it "
        "theirs).",
    ]
    if merged:
        lines += ["", "From (each file's command reproduces its rows):", ""]
        lines += [f"{i}. `{s['file']}`: `{s['command']}`" for i, s in enumerate(merged, 1)]
        replaced = [c for c in data["cells"] if c.get("replaces")]
        if replaced:
            lines.append("")
        for c in replaced:
            older = ", ".join(str(files[f]) for f in c["replaces"])
            lines.append(
                f"- {c['method']}, {c['dataset']}, {c['bits']} bits: from {files[c['source']]}, "
                f"a later run; it replaces the result in {older}."
            )
    if not_run:
        lines += [
            "",
            f"{not_run} cells not run{'' if merged else ' (not shown)'}: each cell of the JSON "
            "names the command that fills it "
            "(`python -m bench.methods --methods M --datasets D --bits B` with the flags above).",
        ]
    if data.get("not_registered"):
        lines += [
            "",
            f"Not registered in this checkout, so not in the table: "
            f"{', '.join(data['not_registered'])}.",
        ]
    for c in data["cells"]:
        if c.get("method_set"):
            lines += [
                "",
                f"{c['method']}, {c['dataset']}, {c['bits']} bits: trained with "
                f"{', '.join(f'`{x}`' for x in c['method_set'])} over its config "
                f"`{c['config']}` (`--method-set`).",
            ]
    return lines


_BACKEND_LABELS = {
    "faiss_flat": 'FAISS `kind="flat"`',
    "faiss_ivf": 'FAISS `kind="ivf"`',
    "milvus_bin_flat": "Milvus `BIN_FLAT`",
    "milvus_bin_ivf_flat": "Milvus `BIN_IVF_FLAT`",
}


def _p50_p99(x: dict[str, Any] | None, p50: str = "median_ms") -> str:
    if not x:
        return "–"
    return f"{_ms(x[p50] / 1000)} / {_ms(x['p99_ms'] / 1000)}"


def _times(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.3g}×"


def _milvus_vs_faiss(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    """bench.milvus_vs_faiss: each backend's figures, and Milvus / FAISS under each pair."""
    clients = [str(c) for c in data["settings"]["http_clients"]]
    lines = [
        "| items | backend | nlist, nprobe | ingest items/s | batch of 100 p50 / p99 "
        "| one query p50 / p99 | recall@10 | memory | "
        + " | ".join(f"HTTP {c} client{'s' if c != '1' else ''} p50 / p99" for c in clients)
        + " |",
        "| --- " * (8 + len(clients)) + "|",
    ]
    summary = {(s["n"], s["milvus"]): s for s in data["summary"]}
    for row in data["results"]:
        for milvus, faiss_name in (
            ("milvus_bin_flat", "faiss_flat"),
            ("milvus_bin_ivf_flat", "faiss_ivf"),
        ):
            for name in (faiss_name, milvus):
                b = row["backends"][name]
                ivf = f"{b['nlist']:,}, {b['nprobe']}" if b["nlist"] else "exact"
                if name.startswith("milvus"):
                    memory = f"{b['server_rss_growth_bytes'] / 1e6:,.0f} MB server RSS"
                else:
                    memory = f"{b['rss_growth_bytes'] / 1e6:,.0f} MB process RSS"
                http = row["http"].get(name, {}).get("clients", {})
                lines.append(
                    f"| {b['items']:,} | {_BACKEND_LABELS[name]} | {ivf} "
                    f"| {b['ingest']['items_per_s']:,.0f} "
                    f"| {_p50_p99(b['search']['batch100'])} | {_p50_p99(b['search']['single'])} "
                    f"| {b['recall_at_10']:.4f} | {memory} | "
                    + " | ".join(_p50_p99(http.get(c), "p50_ms") for c in clients)
                    + " |"
                )
            s = summary[(row["n"], milvus)]

            def pair(key: str, s: dict[str, Any] = s) -> str:
                return _times(s.get(key, {}).get("milvus_over_faiss"))

            lines.append(
                f"| | Milvus / FAISS | | {pair('ingest_items_per_s')} "
                f"| {pair('batch100_p50_ms')} / {pair('batch100_p99_ms')} "
                f"| {pair('single_p50_ms')} / {pair('single_p99_ms')} "
                f"| {pair('recall_at_10')} | {pair('memory_bytes')} | "
                + " | ".join(
                    f"{pair(f'http_{c}_clients_p50_ms')} / {pair(f'http_{c}_clients_p99_ms')}"
                    for c in clients
                )
                + " |"
            )
    consistency = []
    for row in data["results"]:
        for name in ("milvus_bin_flat", "milvus_bin_ivf_flat"):
            b = row["backends"][name]
            c = b["consistency_single_ms"]
            consistency.append(
                f"{_BACKEND_LABELS[name]} at {b['items']:,}: "
                + ", ".join(f"{level} {_ms(v['p50_ms'] / 1000)}" for level, v in c.items())
                + f" (recall@10 {b['recall_as_ingested']:.4f} before the flush, "
                f"{b['segments']['count']} sealed segments after it)"
            )
    lines += [
        "",
        "One Milvus search call's median latency by consistency level (the backend asks for "
        "Strong): " + "; ".join(consistency) + ".",
    ]
    if data["notes"].get("incomplete_ingest"):
        lines += ["", data["notes"]["incomplete_ingest"]]
    return lines


#: Every direction, cross-modal first (bench.methods keeps all four).
CROSS_ALL = (
    "image->text",
    "text->image",
    "video->text",
    "text->video",
    "image->image",
    "video->video",
    "text->text",
)


def kind(data: dict[str, Any]) -> str:
    """Which bench script wrote this results file."""
    # These scripts name themselves in the file; older ones are told apart by their keys.
    if data.get("benchmark") in ("search", "methods", "distributed", "milvus_vs_faiss"):
        return str(data["benchmark"])
    if "method" in data and "binary_map_at_all" in data:
        return "run"
    results = data.get("results")
    if isinstance(results, dict) and all(
        isinstance(r, dict) and "video->text" in r.get("map", {}) for r in results.values()
    ):
        return "video"
    if isinstance(results, list) and results and "text_encoder" in results[0]:
        return "text_encoders"
    if isinstance(results, list) and results and "binary_to_continuous" in results[0]:
        return "accuracy"
    raise SystemExit(f"tables: no table for this results file (keys: {', '.join(data)})")


def _run(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    """One method's recorded run (`hashbridge train` + `eval`) against its target."""
    m, c, t = data["binary_map_at_all"], data["continuous_map_at_all"], data.get("target", {})
    lines = [
        "| method | bits | split seed | epochs | image→text | text→image | image→image "
        "| text→text | continuous i→t / t→i | target i→t / t→i | met | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {data['method']} | {data['bits']} | {data['split_seed']} "
        f"| {data['epochs_trained']} of {data['config_epochs']} "
        f"| {m['image->text']:.3f} | {m['text->image']:.3f} | {m['image->image']:.3f} "
        f"| {m['text->text']:.3f} | {c['image->text']:.3f} / {c['text->image']:.3f} "
        f"| {t.get('image->text', '–')} / {t.get('text->image', '–')} "
        f"| {'yes' if data.get('target_met') else 'no'} | {data['train_seconds']:.0f} |",
    ]
    if t.get("source"):
        lines += ["", f"Target: {t['source']}."]
    if data.get("note"):
        lines += ["", data["note"]]
    return lines


def _distributed(path: Path, data: dict[str, Any], pick: str | None) -> list[str]:
    """bench.distributed: one process against N on the same config."""
    one, many = data["one_process"], data["processes"]
    directions = [d for d in CROSS_ALL if d in one["map"]]
    lines = [
        "| processes | threads each | "
        + " | ".join(_direction(d) for d in directions)
        + " | train s | wall s |",
        "| --- | --- | " + "--- | " * len(directions) + "--- | --- |",
    ]
    for row in (one, many):
        lines.append(
            f"| {row['processes']} | {row['threads_each']} | "
            + " | ".join(f"{row['map'][d]:.3f}" for d in directions)
            + f" | {row['train_seconds']:.0f} | {row['wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "N processes against one: mAP "
        + ", ".join(f"{_direction(d)} {data['map_difference'][d]:+.3f}" for d in directions)
        + f"; wall time x{data['wall_ratio']:.2f}.",
    ]
    return lines


RENDERERS = {
    "distributed": _distributed,
    "methods": _methods,
    "run": _run,
    "accuracy": _accuracy,
    "text_encoders": _text_encoders,
    "video": _video,
    "search": _search,
    "milvus_vs_faiss": _milvus_vs_faiss,
}


def render(source: str | Path) -> str:
    """The Markdown table of one results file (PATH, or PATH#NxBITS for one size of a search)."""
    path, _, pick = str(source).partition("#")
    try:
        data = json.loads((ROOT / path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"tables: {path} does not exist (a table block names it)") from None
    lines = [f"`{path}`", ""]
    if data.get("command"):
        lines += [f"`{data['command']}`", ""]
    lines += RENDERERS[kind(data)](Path(path), data, pick or None)
    return "\n".join(lines)


def write(document: Path) -> None:
    """Replace every table block in `document` with its file's rendering."""
    text = document.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: f"{m[1]}{render(m['path'])}\n{m[4]}", text)
    document.write_text(new, encoding="utf-8")


def main() -> int:
    """Print the tables of the files given, or regenerate a Markdown file's tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "paths", nargs="*", help="results files to render (a search sweep's: PATH#NxBITS)"
    )
    parser.add_argument("--write", type=Path, metavar="FILE", help="regenerate FILE's tables")
    args = parser.parse_args()
    if args.write:
        write(args.write)
    if args.paths:
        print("\n\n".join(render(p) for p in args.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
