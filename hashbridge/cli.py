"""The `hashbridge` command: thin shells over library functions.

Imports happen inside each subcommand so that `hashbridge serve` never loads `model/`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("hashbridge")


Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def _model_command(func: Command) -> Command:
    """Run a subcommand that uses model/, turning its user errors into UsageError."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from model.config import ConfigError
        from model.data.records import DataError

        try:
            return func(args)
        except (ConfigError, DataError) as exc:
            raise UsageError(str(exc)) from None

    return run


@_model_command
def _train(args: argparse.Namespace) -> int:
    from model.config import load_config
    from model.train import train

    overrides = list(args.set or [])
    if args.nproc > 1 and "WORLD_SIZE" in os.environ:
        raise UsageError("--nproc starts the processes itself: under torchrun, drop it")
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.resume:
        if args.config or overrides or args.force:
            # The checkpoint's own config is what makes a resumed run equal an uninterrupted one.
            raise UsageError(
                "--resume continues with the run's saved config: drop "
                "--config/--set/--device/--force"
            )
        run = functools.partial(train, load_config(None), args.out, resume=True, data=args.data)
    else:
        if args.data is not None:
            raise UsageError(
                "--data is for --resume (a run whose data moved); a new run takes data.path "
                "from its config or --set"
            )
        if args.config is None:
            raise UsageError("--config FILE is required unless --resume is given")
        config = load_config(args.config, overrides)
        _writable_folder(args.out, "--out")
        _replace_run(args.out, args.force)
        run = functools.partial(train, config, args.out)
    if args.nproc > 1:
        from hashbridge.launch import launch, without_option

        # Checked above, once: each process runs the same command, less --nproc.
        return launch(without_option(args.argv, "--nproc"), args.nproc)
    try:
        result = run()
    except KeyboardInterrupt:
        return _interrupted(args.out)
    if _rank() != 0:
        return 0  # the first process reports the run
    final = result.history[-1].get("map", {}) if result.history else {}
    print(
        json.dumps(
            {"run": str(result.run_dir), "seconds": round(result.seconds, 1), "map": final},
            indent=2,
        )
    )
    return 0


def _rank() -> int:
    """This process's rank in a distributed run (torchrun's RANK), 0 when alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _replace_run(out: Path, force: bool) -> None:
    """Refuse to train over an earlier run unless forced; forced, drop its checkpoint.

    Its eval reports and bundles stay where they are (they are the user's), but would no
    longer describe the run in that folder: hence the refusal by default.
    """
    from model.checkpoint import CHECKPOINT

    if not (out / CHECKPOINT).exists():
        return
    if not force:
        raise UsageError(
            f"--out {out} holds a run already; continue it with --resume, replace it with "
            "--force, or choose a new folder"
        )
    for name in (CHECKPOINT, "metrics.json"):
        (out / name).unlink(missing_ok=True)


def _interrupted(out: Path) -> int:
    """Ctrl-C ends a training run with one line on what was kept, not a traceback."""
    from model.checkpoint import CHECKPOINT

    kept = (
        f"the last finished epoch is kept: continue with hashbridge train --resume --out {out}"
        if (out / CHECKPOINT).exists()
        else "no epoch had finished, so nothing was kept"
    )
    if _rank() == 0:
        print(f"hashbridge train: interrupted; {kept}", file=sys.stderr)
    return 130


def _writable_folder(path: Path, flag: str) -> None:
    """Refuse a folder that could not be created or written, before minutes of work.

    Nothing is created: a refused run should leave no empty folder behind.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be a folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} is not writable ({existing} is read-only to you)")


@_model_command
def _eval(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_run

    if args.out.is_dir():
        raise UsageError(
            f"--out {args.out} is a folder; give the report's file name, "
            f"e.g. {args.out / 'eval.json'}"
        )
    if args.out.exists() and not _is_eval_report(args.out):
        # A slip such as --out RUN/checkpoint.pt would destroy the trained model.
        raise UsageError(
            f"--out {args.out} exists and is not an earlier eval report; give a new file "
            f"name, e.g. {args.run / 'eval.json'}"
        )
    _writable_folder(args.out.parent, "the folder of --out")
    report = evaluate_run(args.run, args.out, data=args.data)
    summary = {
        "bits": report["bits"],
        "map": report["map"],
        "continuous_map": report["continuous_map"],
        "asymmetric_map": report["asymmetric_map"],
        "hamming_asymmetric_map": report["hamming_asymmetric_map"],
        "plots": report["plots"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _is_eval_report(path: Path) -> bool:
    """Whether `path` holds a report an earlier eval wrote (which eval may replace)."""
    try:
        if path.stat().st_size > 64 << 20:  # reports are kilobytes; never read a large file
            return False
        report = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
        return False
    return isinstance(report, dict) and {"map", "directions", "run"} <= report.keys()


@_model_command
def _export(args: argparse.Namespace) -> int:
    from bundle.manifest import Manifest
    from model.export import ExportError, export_bundle

    # The bundle is built beside --out and renamed into place: say so before the tracing.
    _writable_folder(args.out.parent, "the folder of --out")
    try:
        bundle = export_bundle(args.run, args.out, overwrite=args.force)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    manifest = Manifest.read(bundle)
    modalities = sorted(manifest.modalities)
    summary = {"bundle": str(bundle), "bits": manifest.bits, "modalities": modalities}
    print(json.dumps(summary, indent=2))
    return 0


@_model_command
def _demo(args: argparse.Namespace) -> int:
    from hashbridge.demo import DemoError, DemoOptions, default_workdir, format_report, run_demo

    # One line per HTTP request or FAISS build variant would drown the demo's own output.
    for name in ("httpx", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sizes = {
        k: getattr(args, k)
        for k in ("items", "image_size", "epochs")
        if getattr(args, k) is not None
    }
    options = DemoOptions(
        workdir=args.workdir or default_workdir(), host=args.host, port=args.port, **sizes
    )
    try:
        with run_demo(options) as (report, server):
            print(format_report(report, serving=not args.check), flush=True)
            problems = report.problems()
            for problem in problems:
                print(f"hashbridge demo: poor results: {problem}", file=sys.stderr)
            if args.check:
                print("check " + ("FAILED" if problems else "passed"), flush=True)
                return 1 if problems else 0
            print("serving until Ctrl-C", flush=True)
            server.wait()
    except DemoError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        print("hashbridge demo: interrupted; finished steps are reused next time", file=sys.stderr)
        return 130
    return 0


def serve_settings(args: argparse.Namespace) -> Settings:
    """Service settings from the serve flags over HASHBRIDGE_* env vars (never imports model/)."""
    from pydantic import ValidationError

    from service.settings import SERVE_FLAGS, Settings, describe_invalid

    if args.api_key == "":
        # Given on purpose, an empty flag would silently replace HASHBRIDGE_API_KEY.
        raise UsageError(
            "--api-key is empty; leave it out to take HASHBRIDGE_API_KEY (or serve without a key)"
        )
    flags = {**SERVE_FLAGS, "api_key": "--api-key"}
    given = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in flags.items()}
    try:
        return Settings(**{field: value for field, value in given.items() if value is not None})
    except ValidationError as exc:
        raise UsageError(describe_invalid(exc, flags)) from None


def _serve(args: argparse.Namespace) -> int:
    # Settings first: a missing flag is reported before torch and FAISS are loaded.
    settings = serve_settings(args)
    # FAISS logs each CPU-specific build it cannot find at INFO as it is imported, before
    # the service can quiet it.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from service.errors import BundleError, DataDirError
    from service.main import serve

    try:
        serve(settings)
    except BundleError as exc:
        raise UsageError(f"cannot load the bundle: {exc}") from None
    except DataDirError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from hashbridge.ingest import IngestError, IngestOptions, ingest
    from hashbridge.ingest_sources import SourceError, collect

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    for name, value in (("--batch", args.batch), ("--concurrency", args.concurrency)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {args.retries}")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    try:
        entries = collect(args.paths, args.prefix)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    options = IngestOptions(
        url=args.url,
        api_key=args.api_key or os.environ.get("HASHBRIDGE_API_KEY") or None,
        batch_items=args.batch,
        concurrency=args.concurrency,
        retries=args.retries,
    )
    try:
        report = ingest(entries, options)
    except IngestError as exc:
        raise UsageError(str(exc)) from None
    for line in report.summary_lines():
        print(line, flush=True)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hashbridge", description="Cross-modal deep hashing: train, evaluate, export, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model into a run directory",
        description="Train DSMHN on a config's data into a run folder (checkpoint.pt after "
        "every epoch, metrics.json). --config is required unless --resume continues the run "
        "in --out.",
    )
    p.add_argument("--config", type=Path, help="TOML config (see configs/); not with --resume")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. bits=64"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="run directory for checkpoints and metrics"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--device", help="cpu or cuda (mixed precision on cuda)")
    p.add_argument(
        "--nproc",
        type=_process_count,
        default=1,
        metavar="N",
        help="train as N processes on this machine (DistributedDataParallel: gloo on CPU, "
        "NCCL with one GPU each); as torchrun --nproc_per_node N",
    )
    p.add_argument(
        "--data", type=Path, help="with --resume: where the run's data is now, if it moved"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the run already in --out (its checkpoint and metrics)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run on its query/database split",
        description="Evaluate a run on its own query/database split: mAP@all, mAP@R, P@K and "
        "precision-recall for every direction, binary codes and continuous embeddings side by "
        "side; a JSON report and PNG plots.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory written by train")
    p.add_argument("--out", type=Path, required=True, help="JSON report path (plots go beside it)")
    p.add_argument(
        "--data",
        type=Path,
        help="where the run's data is now, if it moved (it must be the same data)",
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "export",
        help="export a trained run as a bundle the service loads",
        description="Export a run as a bundle: one TorchScript encoder per modality and "
        "manifest.json. It refuses to finish unless the encoders reproduce the eager model's "
        "codes bit for bit.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory written by train")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP",
        description="Serve a bundle. Every setting can also come from a HASHBRIDGE_* env var.",
    )
    # Strings, not Paths: Path("") is the working folder, and Settings refuses an empty one.
    p.add_argument("--bundle", help="bundle folder (HASHBRIDGE_BUNDLE_DIR)")
    p.add_argument("--data", help="collection folder (HASHBRIDGE_DATA_DIR)")
    p.add_argument("--host", help="bind address (HASHBRIDGE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (HASHBRIDGE_PORT, default 8080)")
    p.add_argument(
        "--api-key",
        help="key for write endpoints; prefer HASHBRIDGE_API_KEY, which other users cannot see",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "demo",
        help="generate data, train, export, serve and search a demo collection",
        description="Generate clips of moving shapes with captions and a still of each, train "
        "a small DSMHN model over pictures, clips and text, export it, serve it on localhost "
        "with the data ingested, and show example "
        "queries and the search page. A second run reuses everything and starts in seconds.",
    )
    p.add_argument("--workdir", type=Path, help="work folder (default ~/.cache/hashbridge/demo)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the example queries, exit 0 if their results are relevant (1 if not), no serving",
    )
    p.add_argument("--items", type=int, help="clips (with stills) to generate (default 1200)")
    p.add_argument("--image-size", type=int, help="clip and still side in pixels (default 112)")
    p.add_argument("--epochs", type=int, help="training epochs (default 20)")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "ingest",
        help="send a folder of media, or a manifest, to a running service",
        description="Ingest images, clips and texts into a running service: folders are "
        "walked recursively (a .txt beside an image or clip is its caption, stored as a text), "
        "manifests (.csv, .jsonl) are read like training's (extra columns become metadata). "
        "Items are named by their relative path (a manifest's by row id and column), so a "
        "rerun skips what is stored. Exit status 1 when any item was refused or not sent.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folder or manifest")
    p.add_argument(
        "--url",
        default=os.environ.get("HASHBRIDGE_URL", "http://127.0.0.1:8080"),
        help="the service (HASHBRIDGE_URL, default http://127.0.0.1:8080)",
    )
    p.add_argument("--api-key", help="the service's key (default: HASHBRIDGE_API_KEY)")
    p.add_argument("--batch", type=int, default=32, help="items per request (default 32)")
    p.add_argument(
        "--concurrency", type=int, default=2, help="requests in flight at once (default 2)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=8,
        help="retries of a request on 503 or a dropped connection, with backoff (default 8)",
    )
    p.add_argument(
        "--prefix", default="", help="put before every client id, to keep two sources apart"
    )
    p.set_defaults(func=_ingest)
    return parser


def _process_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
    return count


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quiet = _rank() != 0  # the other processes of a distributed run log warnings only
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Errors are imported per subcommand (see _model_command) so that serve never loads model/.
    try:
        return int(args.func(args))
    except (UsageError, OSError) as exc:
        # OSError: a path the user named is missing, a folder, read-only, full... (-v: where)
        log.debug("%s failed", args.command, exc_info=True)
        if not quiet:  # every process of a distributed run meets the same mistake
            print(f"hashbridge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
