"""The Dockerfiles, docker-compose.yml, .dockerignore and the settings table of docs/deployment.md
against the code.

No Docker engine runs here, so the files are parsed and compared with the code's own truth:
`Settings` (env names, defaults), the routes of `create_app`, the CLI's argument parser, the
console script and packages in pyproject.toml, and the files in the repository. Every kind of
drift is also made on purpose in an in-memory copy, and the checker must report it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import json
import os
import re
import runpy
import shlex
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from starlette.routing import Match

from hashbridge import cli
from service.app import create_app
from service.middleware import host_name
from service.settings import Settings, allowed_host_names

REPO = Path(__file__).resolve().parents[1]
CPU, GPU = "docker/Dockerfile", "docker/Dockerfile.gpu"
COMPOSE = "docker-compose.yml"
SERVICE, GPU_SERVICE, TRAIN, INGEST = "hashbridge", "hashbridge-gpu", "train", "ingest"
#: Optional dependencies every image must hold (a bundle trained with them must load).
IMAGE_EXTRAS = {"minilm"}
#: Shell lines of a compose script that are not commands of ours.
SHELL_BUILTINS = {"set", "test"}
#: The service on the official Milvus standalone stack (profile milvus) and that stack.
MILVUS_SERVICE, MILVUS_STACK = "hashbridge-milvus", ("milvus-etcd", "milvus-minio", "milvus")
PREFIX = str(Settings.model_config.get("env_prefix", "")).upper()
SETTING_ENV_NAMES = {f"{PREFIX}{name}".upper() for name in Settings.model_fields}
BUILD_CONTEXT_EXCLUDES = (".git", ".venv", ".cache", "runs", "data", "dataset", "media")


# ---- parsing -----------------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str


@dataclass
class Deployment:
    """Everything the checks read; tests drift a deep copy of it."""

    dockerfiles: dict[str, list[Instruction]]
    compose: dict[str, Any]
    compose_variables: set[str]  # names interpolated from the host, e.g. HASHBRIDGE_API_KEY
    dockerignore: list[str]
    pyproject: dict[str, Any]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comment lines are dropped, `\\` continuations joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?::?-([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any, seen: set[str]) -> Any:
    """Compose's `${NAME:-default}` with nothing set on the host; `$$` is a literal `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, seen) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        seen.add(m.group(1) or m.group(3))
        return m.group(2) or ""

    return _VARIABLE.sub(substitute, value)


def load_deployment() -> Deployment:
    """Read and parse the deployment files of the repository."""
    seen: set[str] = set()
    compose = interpolate(yaml.safe_load((REPO / COMPOSE).read_text()), seen)
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    return Deployment(
        dockerfiles={name: parse_dockerfile((REPO / name).read_text()) for name in (CPU, GPU)},
        compose=compose,
        compose_variables=seen,
        dockerignore=[p.strip() for p in ignore if p.strip() and not p.startswith("#")],
        pyproject=tomllib.loads((REPO / "pyproject.toml").read_text()),
    )


def exec_form(args: str) -> list[str]:
    """`["a", "b"]` (exec form) or `a b` (shell form) as a list of words."""
    return list(json.loads(args)) if args.startswith("[") else shlex.split(args)


def env_pairs(args: str) -> dict[str, str]:
    """`ENV A=1 B=2` or the legacy `ENV A 1`."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage; each group starts with its FROM."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def _glob(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _glob(pattern[1:], parts[1:])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: patterns are anchored at the context root, match a path or any parent,
    and the last matching pattern wins (`!` re-includes)."""
    parts, excluded = path.split("/"), False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw.lstrip("!")).lstrip("/").split("/")
        if any(_glob(pattern, parts[:i]) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


# ---- the code's truth --------------------------------------------------------------------


@contextlib.contextmanager
def hashbridge_environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly `env` as the process's HASHBRIDGE_* variables (Settings reads os.environ)."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(PREFIX)}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def parse_cli(argv: list[str], where: str, problems: list[str]) -> Any | None:
    """The command line as the `hashbridge` console script would parse it, or None."""
    script = argv[0] if argv else ""
    scripts = TRUTH.scripts
    if script not in scripts:
        problems.append(f"{where}: runs {script!r}, not a console script of pyproject ({scripts})")
        return None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1:]
        problems.append(f"{where}: `{shlex.join(argv)}` does not parse: {' '.join(message)}")
        return None


@dataclass
class Truth:
    """What the code says, computed once."""

    scripts: dict[str, str]
    packages: list[str]
    torch_pin: str
    default_port: int

    @staticmethod
    def read() -> Truth:
        """Console scripts that reach the CLI, top-level packages, the torch pin."""
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        scripts = {}
        for name, target in pyproject["project"]["scripts"].items():
            module, _, attr = target.partition(":")
            if importlib.import_module(module) is cli and callable(getattr(cli, attr, None)):
                scripts[name] = target
        include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
        packages = sorted(
            p.name
            for p in REPO.iterdir()
            if (p / "__init__.py").is_file()
            and any(fnmatchcase(p.name, pattern) for pattern in include)
        )
        pins = (REPO / "scripts/constraints.txt").read_text()
        torch_pin = re.search(r"^torch==(\S+)", pins, re.M)
        assert torch_pin, "scripts/constraints.txt pins no torch"
        return Truth(scripts, packages, torch_pin.group(1), Settings.model_fields["port"].default)


TRUTH = Truth.read()


def serves_get(settings: Settings, path: str) -> bool:
    """Whether the app built from `settings` routes GET `path` (Starlette's own matching)."""
    return _serves_get(settings.model_dump_json(), path)


@functools.lru_cache
def _serves_get(settings_json: str, path: str) -> bool:
    app: FastAPI = create_app(Settings.model_validate_json(settings_json))
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


# ---- checks ------------------------------------------------------------------------------


@dataclass
class Container:
    """What one serving container runs with: environment, command line, health check."""

    where: str
    env: dict[str, str]
    argv: list[str]
    health: list[str]


def check_env_names(where: str, names: Iterable[str], problems: list[str]) -> None:
    """Every HASHBRIDGE_* name is a field of Settings."""
    for name in sorted(n for n in names if n.upper().startswith(PREFIX)):
        if name.upper() not in SETTING_ENV_NAMES:
            problems.append(f"{where}: {name} is not a setting (Settings has {PREFIX}<field>)")


def check_serving(c: Container, problems: list[str]) -> Settings | None:
    """The command parses as `serve`, the settings validate, bind all interfaces, health exists."""
    check_env_names(c.where, c.env, problems)
    args = parse_cli(c.argv, c.where, problems)
    if args is None:
        return None
    if args.command != "serve":
        problems.append(f"{c.where}: runs `hashbridge {args.command}`, not `hashbridge serve`")
        return None
    try:
        with hashbridge_environment(c.env):
            settings = cli.serve_settings(args)
    except cli.UsageError as exc:
        problems.append(f"{c.where}: the server would not start: {exc}")
        return None
    if settings.host not in ("0.0.0.0", "::"):
        problems.append(f"{c.where}: binds {settings.host}, unreachable through a published port")
    if settings.port != TRUTH.default_port:
        problems.append(
            f"{c.where}: serves on port {settings.port}, not the settings default "
            f"{TRUTH.default_port}"
        )
    check_health(c.where, c.health, settings, problems)
    return settings


def check_health(where: str, command: list[str], settings: Settings, problems: list[str]) -> None:
    """The health check asks this container's port for a GET route of the app."""
    url = re.search(r"https?://[^\s'\"]+", " ".join(command))
    if url is None:
        problems.append(f"{where}: health check has no URL: {command}")
        return
    parts = urlsplit(url.group(0))
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"{where}: health check asks {parts.hostname}, not the container itself")
    if parts.port != settings.port:
        problems.append(f"{where}: health check port {parts.port} != served port {settings.port}")
    if not serves_get(settings, parts.path):
        problems.append(f"{where}: health check path {parts.path} is no GET route of the app")


def final_stage(deploy: Deployment, name: str) -> list[Instruction]:
    return stages(deploy.dockerfiles[name])[-1]


def last(instructions: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in instructions if i.keyword == keyword]
    return found[-1] if found else None


def image_container(deploy: Deployment, name: str, where: str) -> Container:
    """The serving container the Dockerfile describes on its own."""
    final = final_stage(deploy, name)
    env: dict[str, str] = {}
    for ins in final:
        if ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    cmd = last(final, "CMD")
    health = last(final, "HEALTHCHECK")
    health_cmd = re.sub(r"^(--\S+\s+)*CMD\s+", "", health.args) if health else ""
    return Container(
        where,
        env,
        exec_form(cmd.args) if cmd else [],
        exec_form(health_cmd) if health_cmd.startswith("[") else [health_cmd],
    )


def check_dockerfile(deploy: Deployment, name: str) -> list[str]:
    """One Dockerfile against the code; returns the problems found."""
    problems: list[str] = []
    final = final_stage(deploy, name)
    where = name
    settings = check_serving(image_container(deploy, name, where), problems)

    user = last(final, "USER")
    if user is None or user.args.split(":")[0] in ("root", "0"):
        problems.append(f"{where}: the final stage runs as root (add a USER)")
    elif not any(
        i.keyword == "RUN" and re.search(rf"(useradd|adduser)\b.*\b{user.args}\b", i.args)
        for i in final
    ):
        problems.append(f"{where}: USER {user.args} is never created in the final stage")
    entry = last(final, "ENTRYPOINT")
    entry_argv = exec_form(entry.args) if entry else []
    if not entry_argv or PurePosixPath(entry_argv[0]).name != "tini" or entry_argv[1:] != ["--"]:
        problems.append(f'{where}: ENTRYPOINT must be ["tini", "--"], got {entry_argv}')
    if not any(i.keyword == "RUN" and re.search(r"install\b.*\btini\b", i.args) for i in final):
        problems.append(f"{where}: tini is not installed in the final stage")

    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    volumes = [v for i in final if i.keyword == "VOLUME" for v in exec_form(i.args)]
    if settings is not None:
        if exposed != {settings.port}:
            problems.append(f"{where}: EXPOSE {sorted(exposed)} != served port {settings.port}")
        check_volumes(where, settings, volumes, problems)
    for volume in volumes:
        if not any(
            i.keyword == "RUN" and re.search(rf"chown\b.*\s{volume}(\s|$)", i.args) for i in final
        ):
            problems.append(
                f"{where}: VOLUME {volume} is not chowned to the user (volumes copy it)"
            )

    check_copies(deploy, name, problems)
    check_installs(deploy, name, problems)
    return problems


def check_volumes(where: str, settings: Settings, volumes: list[str], problems: list[str]) -> None:
    """The data dir is a volume; the bundle dir is one or lies inside one."""
    paths = [PurePosixPath(v) for v in volumes]
    if PurePosixPath(settings.data_dir) not in paths:
        problems.append(f"{where}: data dir {settings.data_dir} is not a VOLUME ({volumes})")
    bundle = PurePosixPath(settings.bundle_dir)
    if not any(bundle == p or p in bundle.parents for p in paths):
        problems.append(f"{where}: bundle dir {bundle} is not in a VOLUME ({volumes})")


def check_copies(deploy: Deployment, name: str, problems: list[str]) -> None:
    """COPY sources exist, reach the build context, and include every package of pyproject."""
    copied: set[str] = set()
    stage_names = [
        i.args.split()[-1]
        for i in deploy.dockerfiles[name]
        if i.keyword == "FROM" and " AS " in i.args.upper()
    ]
    for ins in deploy.dockerfiles[name]:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = exec_form(ins.args)
        flags = [w for w in words if w.startswith("--")]
        sources = [w for w in words if not w.startswith("--")][:-1]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if source_stage is not None:
            if source_stage not in stage_names:
                problems.append(f"{name}: COPY --from={source_stage} names no build stage")
            continue
        for source in sources:
            copied.add(source.rstrip("/"))
            check_source(deploy, name, source.rstrip("/"), problems)
    for needed in [*TRUTH.packages, deploy.pyproject["project"]["readme"]]:
        if needed not in copied:
            problems.append(f"{name}: {needed} is never copied, but `pip install .` needs it")


def check_source(deploy: Deployment, name: str, source: str, problems: list[str]) -> None:
    path = REPO / source
    if not path.exists():
        problems.append(f"{name}: COPY source {source} does not exist in the repository")
        return
    excluded = _first_excluded(source, tuple(deploy.dockerignore))
    if excluded:
        problems.append(f"{name}: COPY {source} needs {excluded}, which .dockerignore excludes")


@functools.lru_cache
def _first_excluded(source: str, patterns: tuple[str, ...]) -> str | None:
    path = REPO / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        rel = file.relative_to(REPO).as_posix()
        if "__pycache__" not in rel and dockerignored(rel, list(patterns)):
            return rel
    return None


def check_installs(deploy: Deployment, name: str, problems: list[str]) -> None:
    """torch at the constraints' pin: the CPU build here, CUDA and faiss-gpu in the GPU file."""
    runs = " ".join(i.args for i in deploy.dockerfiles[name] if i.keyword == "RUN")
    pins = set(re.findall(r"\btorch==(\S+)", runs))
    if pins != {TRUTH.torch_pin}:
        problems.append(
            f"{name}: installs torch {sorted(pins)}, scripts/constraints.txt pins {TRUTH.torch_pin}"
        )
    cpu_index = "download.pytorch.org/whl/cpu" in runs
    bases = [i.args.split()[0] for i in deploy.dockerfiles[name] if i.keyword == "FROM"]
    if name == GPU:
        if cpu_index:
            problems.append(f"{name}: takes torch from the CPU index; the GPU image needs CUDA")
        if not re.search(r"pip install\b[^&]*\bfaiss-gpu", runs):
            problems.append(f"{name}: does not install faiss-gpu")
        if not re.search(r"pip uninstall\b[^&]*\bfaiss-cpu", runs):
            problems.append(f"{name}: keeps faiss-cpu, which shadows faiss-gpu's `faiss` module")
        if not all(b.startswith("nvidia/cuda:") for b in bases):
            problems.append(f"{name}: builds on {bases}, not an NVIDIA CUDA image")
    elif not cpu_index:
        problems.append(f"{name}: takes torch from PyPI (the CUDA build); use the CPU index")
    check_extras(deploy, name, runs, problems)


def check_extras(deploy: Deployment, name: str, runs: str, problems: list[str]) -> None:
    """The project is installed with IMAGE_EXTRAS (literally or through ARG EXTRAS's default)."""
    args = {}
    for ins in deploy.dockerfiles[name]:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            args[key.strip()] = value.strip().strip('"')
    installed: set[str] = set()
    for spec in re.findall(r"pip install\b[^&]*?\s\"?\.\[([^\]]*)\]", runs):
        spec = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), spec)
        installed |= {e.strip() for e in spec.split(",") if e.strip()}
    declared = set(deploy.pyproject["project"].get("optional-dependencies", {}))
    for extra in sorted(installed - declared):
        problems.append(f"{name}: installs extra {extra!r}, which pyproject does not declare")
    for extra in sorted(IMAGE_EXTRAS - installed):
        problems.append(f"{name}: the image lacks the {extra!r} extra")


def parse_port(entry: Any) -> int:
    """Container side of a compose `ports` entry."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).split(":")[-1].split("/")[0])


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool


def parse_mount(entry: Any) -> Mount:
    """A compose `volumes` entry, short or long syntax."""
    if isinstance(entry, dict):
        return Mount(str(entry.get("source", "")), entry["target"], bool(entry.get("read_only")))
    source, target, *mode = str(entry).split(":")
    return Mount(source, target, "ro" in (mode[0].split(",") if mode else []))


def check_compose(deploy: Deployment) -> list[str]:
    """docker-compose.yml against the Dockerfiles and the code; returns the problems found."""
    problems: list[str] = []
    compose = deploy.compose
    services: dict[str, Any] = compose.get("services", {})
    named_volumes = set((compose.get("volumes") or {}).keys())
    check_env_names(COMPOSE, deploy.compose_variables, problems)
    bundle_mount: Mount | None = None
    bundle_dir: PurePosixPath | None = None
    serving = ((SERVICE, CPU, None), (GPU_SERVICE, GPU, "gpu"), (MILVUS_SERVICE, CPU, "milvus"))
    for svc_name, dockerfile, profile in serving:
        svc = services.get(svc_name)
        where = f"{COMPOSE} service {svc_name}"
        if svc is None:
            problems.append(f"{COMPOSE}: no service {svc_name!r}")
            continue
        if svc_name == MILVUS_SERVICE:
            # It runs the CPU service's image rather than building it again.
            built = (services.get(SERVICE) or {}).get("image")
            if svc.get("build") or svc.get("image") != built:
                problems.append(f"{where}: must run {built}, built by {SERVICE}, not build its own")
        else:
            check_build(where, svc, dockerfile, problems)
        if profile not in (svc.get("profiles") or [None]):
            problems.append(f"{where}: profiles {svc.get('profiles')}, expected {profile}")
        if profile == "gpu":
            check_gpu_devices(where, svc, problems)
        if svc.get("restart") in (None, "no"):
            problems.append(f"{where}: no restart policy")
        image = image_container(deploy, dockerfile, where)
        env = {**image.env, **{k: str(v) for k, v in dict_env(svc).items() if v is not None}}
        health = svc.get("healthcheck", {}).get("test", image.health)
        health = [health] if isinstance(health, str) else list(health)
        argv = svc.get("command") or image.argv
        container = Container(
            where, env, argv if isinstance(argv, list) else shlex.split(argv), health
        )
        settings = check_serving(container, problems)
        if settings is None:
            continue
        if profile == "milvus":
            check_milvus_stack(where, svc, services, settings, problems)
        elif settings.index_backend != "faiss":
            problems.append(f"{where}: index_backend {settings.index_backend}, expected faiss")
        ports = [parse_port(p) for p in svc.get("ports", [])]
        if not ports or set(ports) != {settings.port}:
            problems.append(f"{where}: publishes container ports {ports}, serves {settings.port}")
        mounts = [parse_mount(v) for v in svc.get("volumes", [])]
        data = [m for m in mounts if PurePosixPath(m.target) == PurePosixPath(settings.data_dir)]
        if not data or data[0].source not in named_volumes or data[0].read_only:
            problems.append(f"{where}: data dir {settings.data_dir} is not a writable named volume")
        bundle_dir = PurePosixPath(settings.bundle_dir)
        holding = [
            m for m in mounts if PurePosixPath(m.target) in (bundle_dir, *bundle_dir.parents[:-1])
        ]
        if not holding:
            problems.append(f"{where}: nothing is mounted at the bundle dir {bundle_dir}")
            continue
        if not holding[0].read_only:
            problems.append(f"{where}: the bundle mount {holding[0].target} is not read-only")
        if holding[0].source not in named_volumes:
            problems.append(
                f"{where}: the bundle mount is not a named volume the train service fills"
            )
        bundle_mount = holding[0] if svc_name == SERVICE else bundle_mount
    for svc_name, svc in services.items():
        if svc_name.startswith(TRAIN):
            check_train(f"{COMPOSE} service {svc_name}", svc, bundle_mount, bundle_dir, problems)
    if TRAIN not in services:
        problems.append(f"{COMPOSE}: no one-shot {TRAIN!r} service")
    check_images(services, problems)
    if INGEST in services:
        check_ingest(deploy, services, problems)
    else:
        problems.append(f"{COMPOSE}: no one-shot {INGEST!r} service")
    return problems


def check_images(services: dict[str, Any], problems: list[str]) -> None:
    """Each image tag is built by exactly one service; the others run it and never pull it."""
    builders: dict[str, list[str]] = {}
    for name, svc in services.items():
        if svc.get("build"):
            builders.setdefault(str(svc.get("image")), []).append(name)
    for tag, names in builders.items():
        if len(names) > 1:
            problems.append(f"{COMPOSE}: services {', '.join(names)} all build {tag}: build once")
    for name, svc in services.items():
        if svc.get("build"):
            continue
        tag = str(svc.get("image"))
        if name in MILVUS_STACK:
            continue  # the official Milvus stack's images, pulled from their registries
        if tag not in builders:
            problems.append(f"{COMPOSE} service {name}: runs {tag}, which no service builds")
        elif svc.get("pull_policy") != "never":
            problems.append(
                f"{COMPOSE} service {name}: runs {tag} built here; pull_policy must be never "
                "(else a missing image is looked for in a registry)"
            )


def check_ingest(deploy: Deployment, services: dict[str, Any], problems: list[str]) -> None:
    """One-shot `hashbridge ingest` of a read-only folder into a service that answers its Host."""
    where = f"{COMPOSE} service {INGEST}"
    svc = services[INGEST]
    if not svc.get("profiles") or svc.get("restart") not in ("no", None):
        problems.append(f'{where}: must be one-shot: a profile and restart: "no"')
    commands = [parse_cli(argv, where, problems) for argv in script_commands(svc, where, problems)]
    parsed = [c for c in commands if c is not None]
    if [c.command for c in parsed] != ["ingest"]:
        problems.append(f"{where}: runs {[c.command for c in parsed]}, expected hashbridge ingest")
        return
    args = parsed[0]
    mounts = [parse_mount(v) for v in svc.get("volumes", [])]
    for path in map(PurePosixPath, map(str, args.paths)):
        holding = [m for m in mounts if PurePosixPath(m.target) in (path, *path.parents)]
        if not holding:
            problems.append(f"{where}: {path} is not inside any mount")
        elif not holding[0].read_only:
            problems.append(f"{where}: the media mount {holding[0].target} is not read-only")
    url = urlsplit(args.url)
    target = services.get(url.hostname or "")
    if target is None or not target.get("build"):
        problems.append(f"{where}: sends to {url.hostname}, which is no serving service")
        return
    image = image_container(deploy, CPU if target["build"].get("dockerfile") == CPU else GPU, where)
    env = {**image.env, **{k: str(v) for k, v in dict_env(target).items() if v is not None}}
    with hashbridge_environment({k: v for k, v in env.items() if k.startswith(PREFIX)}):
        settings = Settings()
    if url.port != settings.port:
        problems.append(f"{where}: sends to port {url.port}, {url.hostname} serves {settings.port}")
    allowed = allowed_host_names(settings)
    name = host_name(url.netloc)
    if allowed is not None and name not in allowed:
        problems.append(
            f"{where}: sends Host {name!r}, which {url.hostname}'s HASHBRIDGE_ALLOWED_HOSTS "
            f"refuses ({sorted(allowed)})"
        )


def check_milvus_stack(
    where: str,
    svc: dict[str, Any],
    services: dict[str, Any],
    settings: Settings,
    problems: list[str],
) -> None:
    """The Milvus service: pointed at the stack's Milvus, started after it is healthy."""
    if settings.index_backend != "milvus":
        problems.append(f"{where}: index_backend {settings.index_backend}, expected milvus")
    host = settings.milvus_uri.split("://", 1)[-1].rsplit(":", 1)[0]
    if host != "milvus":
        problems.append(f"{where}: HASHBRIDGE_MILVUS_URI {settings.milvus_uri} is not the stack's")
    depends = svc.get("depends_on") or {}
    if (depends.get("milvus") or {}).get("condition") != "service_healthy":
        problems.append(f"{where}: does not wait for a healthy milvus (depends_on)")
    for name in MILVUS_STACK:
        part = services.get(name)
        if part is None or "milvus" not in (part.get("profiles") or []):
            problems.append(f"{COMPOSE}: no {name!r} service in profile milvus")
        elif not part.get("healthcheck") or part.get("restart") in (None, "no"):
            problems.append(f"{COMPOSE} service {name}: no healthcheck or restart policy")
    milvus = services.get("milvus") or {}
    env = dict_env(milvus)
    if env.get("ETCD_ENDPOINTS") != "milvus-etcd:2379" or env.get("MINIO_ADDRESS") != (
        "milvus-minio:9000"
    ):
        problems.append(f"{COMPOSE} service milvus: not pointed at milvus-etcd and milvus-minio")


def dict_env(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return dict(env)


def check_build(where: str, svc: dict[str, Any], dockerfile: str, problems: list[str]) -> None:
    build = svc.get("build") or {}
    context = (REPO / build.get("context", ".")).resolve()
    if context != REPO or build.get("dockerfile") != dockerfile:
        problems.append(f"{where}: build {build}, expected context . and dockerfile {dockerfile}")


def check_gpu_devices(where: str, svc: dict[str, Any], problems: list[str]) -> None:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        problems.append(f"{where}: reserves no nvidia GPU (deploy.resources.reservations.devices)")


def script_commands(svc: dict[str, Any], where: str, problems: list[str]) -> list[list[str]]:
    """`hashbridge ...` command lines of a service, its own $VARIABLES expanded."""
    command = svc.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if command[:2] != ["sh", "-c"]:
        return [command]
    env = {k: str(v) for k, v in dict_env(svc).items()}
    lines = []
    for line in command[2].splitlines():
        for name in re.findall(r"\$\{?([A-Za-z_]\w*)", line):
            if name not in env:
                problems.append(f"{where}: the script uses ${name}, which its environment lacks")
        expanded = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), ""), line)
        words = shlex.split(expanded)
        if words and words[0] not in SHELL_BUILTINS:
            lines.append(words)
    return lines


def check_train(
    where: str,
    svc: dict[str, Any],
    bundle_mount: Mount | None,
    bundle_dir: PurePosixPath | None,
    problems: list[str],
) -> None:
    """One-shot train + export into the volume that the service mounts read-only."""
    if not svc.get("profiles") or svc.get("restart") not in ("no", None):
        problems.append(f'{where}: must be one-shot: a profile and restart: "no"')
    parsed = {}
    for argv in script_commands(svc, where, problems):
        args = parse_cli(argv, where, problems)
        if args is not None:
            parsed[args.command] = args
    if set(parsed) != {"train", "export"}:
        problems.append(f"{where}: runs {sorted(parsed)}, expected hashbridge train then export")
        return
    train, export = parsed["train"], parsed["export"]
    if export.run != train.out:
        problems.append(f"{where}: exports run {export.run}, but trains into {train.out}")
    if bundle_dir is not None and PurePosixPath(export.out) != bundle_dir:
        problems.append(f"{where}: exports to {export.out}, the service loads {bundle_dir}")
    mounts = [parse_mount(v) for v in svc.get("volumes", [])]
    targets = {PurePosixPath(m.target): m for m in mounts}
    if bundle_mount is not None:
        mine = targets.get(PurePosixPath(bundle_mount.target))
        if mine is None or mine.source != bundle_mount.source or mine.read_only:
            problems.append(
                f"{where}: must mount {bundle_mount.source} writable at {bundle_mount.target}, "
                "where the service reads the bundle"
            )
    for mount in mounts:
        host = Path(mount.source)
        if mount.source.startswith(".") and not (REPO / host).resolve().is_relative_to(REPO):
            problems.append(
                f"{where}: mounts {mount.source} by default, which exists only in this "
                "repository's development layout; default to a folder inside the checkout"
            )
    inside = [PurePosixPath(train.config), PurePosixPath(train.out)]
    overrides = dict(s.split("=", 1) for s in train.set or [] if "=" in s)
    if "data.path" in overrides:
        # Overrides are TOML literals, as model.config reads them.
        inside.append(PurePosixPath(tomllib.loads(f"v = {overrides['data.path']}")["v"]))
    for path in inside:
        if not any(path == t or t in path.parents for t in targets):
            problems.append(f"{where}: {path} is not inside any mount")
    workdir = PurePosixPath(svc.get("working_dir", "/"))
    if not any(workdir == t or t in workdir.parents for t, m in targets.items() if not m.read_only):
        problems.append(
            f"{where}: working_dir {workdir} (where .cache/ features go) is not a writable mount"
        )


def check_all(deploy: Deployment) -> list[str]:
    """Every problem of every file."""
    return [
        *check_dockerfile(deploy, CPU),
        *check_dockerfile(deploy, GPU),
        *check_compose(deploy),
    ]


# ---- tests -------------------------------------------------------------------------------


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


def _edit(name: str, keyword: str, old: str, new: str) -> Callable[[Deployment], None]:
    """Replace `old` in the `keyword` instructions of a Dockerfile (it must occur)."""

    def mutate(d: Deployment) -> None:
        hits = [i for i in d.dockerfiles[name] if i.keyword == keyword and old in i.args]
        assert hits, f"{name} has no {keyword} with {old!r}: the drift test is stale"
        for ins in hits:
            ins.args = ins.args.replace(old, new)

    return mutate


def _drop(name: str, keyword: str, containing: str = "") -> Callable[[Deployment], None]:
    def mutate(d: Deployment) -> None:
        before = len(d.dockerfiles[name])
        d.dockerfiles[name] = [
            i for i in d.dockerfiles[name] if not (i.keyword == keyword and containing in i.args)
        ]
        assert len(d.dockerfiles[name]) < before, "nothing to drop: the drift test is stale"

    return mutate


def _service(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Deployment], None]:
    def mutate(d: Deployment) -> None:
        change(d.compose["services"][name])

    return mutate


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        if value is None:
            del svc[key]
        else:
            svc[key] = value

    return change


def _rename_env(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        svc["environment"] = {(new if k == old else k): v for k, v in svc["environment"].items()}

    return change


def _env(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        svc["environment"] = {**svc["environment"], key: value}

    return change


def _script(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        assert old in svc["command"][2], "the drift test is stale"
        svc["command"] = [*svc["command"][:2], svc["command"][2].replace(old, new)]

    return change


def _healthcheck_url(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        svc["healthcheck"] = {**svc["healthcheck"]}
        svc["healthcheck"]["test"] = [w.replace(old, new) for w in svc["healthcheck"]["test"]]

    return change


def _volume(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(svc: dict[str, Any]) -> None:
        assert old in svc["volumes"], "the drift test is stale"
        svc["volumes"] = [new if v == old else v for v in svc["volumes"]]

    return change


def _ignore(pattern: str) -> Callable[[Deployment], None]:
    def mutate(d: Deployment) -> None:
        d.dockerignore.append(pattern)

    return mutate


DRIFTS = {
    # ports
    "EXPOSE another port": (_edit(CPU, "EXPOSE", "8080", "8081"), "EXPOSE [8081]"),
    "image serves another port": (
        _edit(CPU, "ENV", "HASHBRIDGE_PORT=8080", "HASHBRIDGE_PORT=9000"),
        "port 9000",
    ),
    "compose publishes another container port": (
        _service(SERVICE, _set("ports", ["127.0.0.1:8080:8081"])),
        "container ports [8081]",
    ),
    "compose serves another port": (
        _service(SERVICE, _env("HASHBRIDGE_PORT", "9000")),
        "port 9000",
    ),
    "server binds loopback": (
        _service(GPU_SERVICE, _env("HASHBRIDGE_HOST", "127.0.0.1")),
        "binds 127.0.0.1",
    ),
    # env names
    "misspelt ENV in a Dockerfile": (
        _edit(GPU, "ENV", "HASHBRIDGE_DATA_DIR=", "HASHBRIDGE_DATADIR="),
        "HASHBRIDGE_DATADIR is not a setting",
    ),
    "misspelt env in compose": (
        _service(SERVICE, _rename_env("HASHBRIDGE_LOG_LEVEL", "HASHBRIDGE_LOGLEVEL")),
        "HASHBRIDGE_LOGLEVEL is not a setting",
    ),
    "misspelt host variable in compose": (
        lambda d: d.compose_variables.add("HASHBRIDGE_APIKEY"),
        "HASHBRIDGE_APIKEY is not a setting",
    ),
    # health endpoint
    "Dockerfile health path": (
        _edit(CPU, "HEALTHCHECK", "/healthz", "/health"),
        "path /health is no GET route",
    ),
    "compose health path": (
        _service(SERVICE, _healthcheck_url("/healthz", "/healthy")),
        "path /healthy is no GET route",
    ),
    "health check asks another host": (
        _edit(GPU, "HEALTHCHECK", "127.0.0.1", "hashbridge"),
        "asks hashbridge",
    ),
    "compose health port": (
        _service(GPU_SERVICE, _healthcheck_url(":8080/", ":8081/")),
        "port 8081",
    ),
    # paths
    "data VOLUME moved": (
        _edit(CPU, "VOLUME", '"/data"', '"/var/data"'),
        "data dir /data is not a VOLUME",
    ),
    "bundle dir outside the volumes": (
        _edit(GPU, "ENV", "HASHBRIDGE_BUNDLE_DIR=/models/bundle", "HASHBRIDGE_BUNDLE_DIR=/bundle"),
        "bundle dir /bundle is not in a VOLUME",
    ),
    "compose data volume elsewhere": (
        _service(SERVICE, _volume("hashbridge-data:/data", "hashbridge-data:/srv/data")),
        "data dir /data",
    ),
    "compose bundle mount writable": (
        _service(SERVICE, _volume("hashbridge-models:/models:ro", "hashbridge-models:/models")),
        "not read-only",
    ),
    "train exports elsewhere": (
        _service(TRAIN, _script("--out /models/bundle", "--out /models/current")),
        "exports to /models/current",
    ),
    "train exports another run": (
        _service(TRAIN, _script('--run "/runs/$TRAIN_RUN"', "--run /runs/other")),
        "exports run /runs/other",
    ),
    "train caches outside the volumes": (
        _service(TRAIN, _set("working_dir", "/tmp")),
        "working_dir /tmp",
    ),
    "train mounts no bundle volume": (
        _service(TRAIN, _volume("hashbridge-models:/models", "hashbridge-other:/models")),
        "must mount",
    ),
    # CLI entry point and flags
    "unknown subcommand": (_edit(CPU, "CMD", '"serve"', '"server"'), "invalid choice: 'server'"),
    "unknown serve flag": (_edit(GPU, "CMD", '"serve"', '"serve", "--bundel", "/b"'), "--bundel"),
    "not the console script": (_edit(CPU, "CMD", '"hashbridge"', '"hb"'), "runs 'hb'"),
    "unknown train flag": (_service(TRAIN, _script("--config", "--cfg")), "does not parse"),
    "variable the script lacks": (
        _service(TRAIN, _script("--force $TRAIN_ARGS", "--force $ARGS")),
        "$ARGS",
    ),
    # image hygiene
    "root user": (_edit(CPU, "USER", "hashbridge", "root"), "runs as root"),
    "no tini": (_drop(GPU, "ENTRYPOINT"), "ENTRYPOINT must be"),
    "tini not installed": (_edit(CPU, "RUN", " tini ", " "), "tini is not installed"),
    "volume not owned by the user": (
        _edit(CPU, "RUN", "/models /data /runs", "/models /runs"),
        "/data is not chowned",
    ),
    "missing COPY source": (
        _edit(CPU, "COPY", "model model", "models models"),
        "models does not exist",
    ),
    "package not copied": (_drop(GPU, "COPY", "index index"), "index is never copied"),
    "COPY source ignored": (_ignore("service/static"), ".dockerignore excludes"),
    "COPY from no stage": (
        _edit(CPU, "COPY", "--from=builder", "--from=build"),
        "names no build stage",
    ),
    # torch and faiss
    "torch pin drifts": (
        _edit(CPU, "RUN", "torch==2.13.0", "torch==2.12.0"),
        "installs torch ['2.12.0']",
    ),
    "CPU image takes PyPI torch": (
        _edit(CPU, "RUN", "--index-url https://download.pytorch.org/whl/cpu", ""),
        "use the CPU index",
    ),
    "GPU image takes CPU torch": (
        _edit(
            GPU,
            "RUN",
            "pip install -c scripts/constraints.txt torch",
            "pip install --index-url https://download.pytorch.org/whl/cpu torch",
        ),
        "needs CUDA",
    ),
    "GPU image without faiss-gpu": (
        _edit(GPU, "RUN", "faiss-gpu==", "faiss-cpu=="),
        "does not install faiss-gpu",
    ),
    "GPU image not on CUDA": (
        _edit(GPU, "FROM", "nvidia/cuda:13.0.2-base-ubuntu24.04", "ubuntu:24.04"),
        "not an NVIDIA CUDA",
    ),
    # compose services
    "GPU service always on": (_service(GPU_SERVICE, _set("profiles", None)), "expected gpu"),
    "GPU service reserves no GPU": (
        _service(GPU_SERVICE, _set("deploy", None)),
        "reserves no nvidia GPU",
    ),
    "GPU service on the CPU Dockerfile": (
        _service(GPU_SERVICE, _set("build", {"context": ".", "dockerfile": CPU})),
        "expected context",
    ),
    "train restarts": (_service(TRAIN, _set("restart", "unless-stopped")), "must be one-shot"),
    # images and their extras
    "train builds the image again": (
        _service(TRAIN, _set("build", {"context": ".", "dockerfile": CPU})),
        "all build hashbridge:cpu: build once",
    ),
    "a service runs an image nobody builds": (
        _service(INGEST, _set("image", "hashbridge:latest")),
        "which no service builds",
    ),
    "a service may pull the local image": (
        _service(TRAIN, _set("pull_policy", None)),
        "pull_policy must be never",
    ),
    "image without the minilm extra": (
        _edit(CPU, "ARG", "EXTRAS=milvus,minilm", "EXTRAS=milvus"),
        "lacks the 'minilm' extra",
    ),
    "image installs an undeclared extra": (
        _edit(GPU, "ARG", "EXTRAS=milvus,minilm", "EXTRAS=milvus,minilm,gpu"),
        "extra 'gpu', which pyproject does not declare",
    ),
    "train data defaults to the development layout": (
        _service(TRAIN, _volume("./dataset:/dataset:ro", "../shared/datasets/x:/dataset:ro")),
        "development layout",
    ),
    # the ingest service
    "ingest restarts": (_service(INGEST, _set("restart", "always")), "must be one-shot"),
    "ingest sends to no service": (
        _service(INGEST, _env("INGEST_URL", "http://search:8080")),
        "sends to search, which is no serving service",
    ),
    "ingest sends to another port": (
        _service(INGEST, _env("INGEST_URL", "http://hashbridge:9000")),
        "sends to port 9000",
    ),
    "ingest Host not allowed": (
        _service(SERVICE, _env("HASHBRIDGE_ALLOWED_HOSTS", "localhost")),
        "sends Host 'hashbridge'",
    ),
    "ingest media mount writable": (
        _service(INGEST, _volume("./media:/media:ro", "./media:/media")),
        "is not read-only",
    ),
    "ingest reads outside its mounts": (
        _service(INGEST, _script("ingest /media", "ingest /photos")),
        "/photos is not inside any mount",
    ),
    "no restart policy": (_service(SERVICE, _set("restart", None)), "no restart policy"),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_drift_is_reported(deployment: Deployment, drift: str) -> None:
    mutate, expected = DRIFTS[drift]
    drifted = copy.deepcopy(deployment)
    mutate(drifted)
    problems = check_all(drifted)
    assert any(expected in p for p in problems), problems
