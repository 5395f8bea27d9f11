"""The real server with its encoders on cuda and faiss-gpu search, against the same on the CPU.

Run on a GPU machine from the repository root (after `. scripts/gpu/env.sh` there):
    python3 scripts/gpu/check_service.py
Exits 0 when both servers store the same codes and rank a text query the same way.
"""

import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.service_bundle import AUTH, ServerProcess, build_bundle  # noqa: E402

TEXTS = ["red car on a street", "dog on the beach", "sunset over the sea", "train in the snow"]


def codes_and_ranking(bundle: Path, root: Path, device: str) -> tuple[list[str], list[str]]:
    """Ingest TEXTS into a fresh collection and search it; (stored codes, ranked client ids)."""
    env = {"HASHBRIDGE_ENCODER_DEVICE": device, "HASHBRIDGE_INDEX_GPU": str(device == "cuda")}
    with ServerProcess(bundle, root / f"data-{device}", root / f"log-{device}", **env) as server:
        server.wait_ready(120)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            items = [{"client_id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)]
            r = client.post("/v1/items", json={"items": items}, headers=AUTH)
            r.raise_for_status()
            hits = client.post("/v1/search", json={"text": "dog beach", "k": 4}).json()
        loaded = [line for line in server.output().splitlines() if "loaded" in line]
        print(device, *loaded, sep="\n  ")
    return [i["code"] for i in r.json()["items"]], [h["client_id"] for h in hits["results"]]


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="check-service-"))
    bundle = build_bundle(root / "bundle")
    cpu, gpu = (codes_and_ranking(bundle, root, device) for device in ("cpu", "cuda"))
    print("cpu ", cpu, "\ncuda", gpu, "\nsame codes and ranking:", cpu == gpu)
    return 0 if cpu == gpu else 1


if __name__ == "__main__":
    sys.exit(main())
