"""``python -m service [--bundle B] [--data D] [--host H] [--port P]``; the rest from env."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from service.errors import BundleError, DataDirError
from service.main import serve
from service.settings import Settings, describe_invalid


def main(argv: list[str] | None = None) -> int:
    """Build Settings from flags over HASHBRIDGE_* env vars and serve."""
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--bundle", dest="bundle_dir", help="bundle folder (HASHBRIDGE_BUNDLE_DIR)")
    parser.add_argument("--data", dest="data_dir", help="data folder (HASHBRIDGE_DATA_DIR)")
    parser.add_argument("--host", help="bind address (HASHBRIDGE_HOST)")
    parser.add_argument("--port", type=int, help="port (HASHBRIDGE_PORT)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
        serve(settings)
    except ValidationError as exc:
        sys.stderr.write(f"hashbridge: {describe_invalid(exc)}\n")
        return 2
    except (BundleError, DataDirError) as exc:
        sys.stderr.write(f"hashbridge: cannot start: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
