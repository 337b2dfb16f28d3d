"""The container files, checked cheaply (seconds, no Docker engine, no image build).

hadolint lints the Dockerfile; the compose files are validated against the Compose
Specification's JSON schema (check-jsonschema's vendored copy, offline) and resolved by
Debian's ``docker-compose config`` (``make system-deps`` installs it; missing, the test
fails). Building the images and running them is ``make docker-smoke`` (minutes), not part of
this suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TRAINING_JOBS = (
    "train", "prepare", "train-prior", "train-teacher", "distill", "evaluate", "export",
)  # fmt: skip


def _tool(name: str) -> str:
    """A console script of this virtualenv (the dev extra installs it), else one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make setup installs the dev extra)")
    return found


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _docker_compose() -> str:
    """Debian's docker-compose (``make system-deps`` installs it)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run 'make system-deps' as root")
    return binary


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its text."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_passes_hadolint() -> None:
    result = _run([_tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec_schema(path: Path) -> None:
    command = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    result = _run(command)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_docker_compose_config_resolves_the_files(files: list[Path]) -> None:
    command = [_docker_compose(), "--env-file", str(ENV_EXAMPLE)]
    for path in files:
        command += ["-f", str(path)]
    result = _run([*command, "config", "--quiet"])
    assert result.returncode == 0, result.stderr


def test_compose_build_defaults_are_the_dockerfiles() -> None:
    dockerfile = DOCKERFILE.read_text()
    args = _load(COMPOSE)["x-job"]["build"]["args"]
    for name, value in args.items():
        default = re.search(rf"^ARG {name}=(\S+)$", dockerfile, flags=re.M)
        assert default is not None, f"the Dockerfile has no default for {name}"
        assert value.endswith(f"{default.group(1)}}}"), f"{name}: {value} vs {default.group(1)}"


def test_dockerfile_runtime_targets_carry_no_build_tools() -> None:
    stages = _stages()
    assert {"base", "build", "runtime", "train", "serve"} <= set(stages)
    assert "gcc" in stages["build"]
    for name in ("base", "runtime", "train", "serve"):
        assert "gcc" not in stages[name] and "pip install" not in stages[name], name
    for name in ("runtime", "train", "serve"):
        assert "FROM build" not in stages[name]
    assert re.search(r"^USER \$\{APP_UID\}", stages["runtime"], flags=re.M)


def test_the_serving_image_carries_no_training_code() -> None:
    serve = _stages()["serve"]
    copied = re.findall(r"^COPY --from=build (\S+)", serve, flags=re.M)
    assert "/app/models" in " ".join(copied) and "/app/service" in " ".join(copied)
    assert not [path for path in copied if "training" in path or "benchmarks" in path]
    assert "/app " not in " ".join(copied) + " "  # not the whole project


def test_compose_jobs_share_volumes_and_serve_reads_artifacts_only() -> None:
    services = _load(COMPOSE)["services"]
    for name in TRAINING_JOBS:
        assert {"data:/data", "artifacts:/artifacts"} <= set(services[name]["volumes"]), name
        assert services[name]["build"]["target"] == "train"
    for name, service in services.items():
        for needed in service.get("depends_on", {}).values():
            assert needed == {"condition": "service_completed_successfully"}, name
    serve = services["serve"]
    assert serve["volumes"] == ["artifacts:/artifacts:ro"]
    assert serve["build"]["target"] == "serve"
    assert serve["environment"]["DISTILWAVE_BUNDLE"].endswith(":-/artifacts/bundle}")
    export = services["export"]["command"]
    assert export[export.index("--out") + 1] == "/artifacts/bundle"


# The image fixes these (0.0.0.0:8000 inside the container; PORT and BIND_ADDRESS publish it);
# distilwave serve makes ready_dir itself for each run.
NOT_PASSED = {"host", "port", "ready_dir"}


def _setting_variables() -> set[str]:
    from service.settings import Settings

    return {f"DISTILWAVE_{name.upper()}" for name in Settings.model_fields} - {
        f"DISTILWAVE_{name.upper()}" for name in NOT_PASSED
    }


def test_compose_serve_passes_every_service_setting_and_documents_it() -> None:
    environment = _load(COMPOSE)["services"]["serve"]["environment"]
    assert set(environment) == _setting_variables()
    example = ENV_EXAMPLE.read_text()
    for variable in _setting_variables():
        assert variable in example, f"{variable} is not in .env.example"


def _resolved_serve(tmp_path: Path, env_file: str, **shell: str) -> dict:
    """The serve service as docker-compose resolves it with this .env and shell."""
    (tmp_path / ".env").write_text(env_file)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DISTILWAVE_") and k not in ("PORT", "BIND_ADDRESS")
    }
    command = [_docker_compose(), "--env-file", str(tmp_path / ".env"), "-f", str(COMPOSE)]
    result = subprocess.run(
        [*command, "config"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**clean, **shell},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]["serve"]


def _host_addresses(ports: list) -> list[str]:
    """Host addresses of the published ports (short or long syntax)."""
    found = []
    for port in ports:
        if isinstance(port, dict):
            found.append(str(port.get("host_ip", "")))
        else:
            found.append(str(port).rsplit(":", 2)[0] if str(port).count(":") >= 2 else "")
    return found


def test_env_file_limits_reach_the_service_settings(tmp_path: Path) -> None:
    from service.settings import Settings

    serve = _resolved_serve(
        tmp_path, "DISTILWAVE_MAX_BATCH=3\nDISTILWAVE_QUEUE_SIZE=5\n", DISTILWAVE_MAX_STREAMS="2"
    )
    passed = {k: v for k, v in serve["environment"].items() if v is not None}
    assert passed["DISTILWAVE_MAX_BATCH"] == "3" and passed["DISTILWAVE_QUEUE_SIZE"] == "5"
    prefix = "DISTILWAVE_"
    settings = Settings(**{k.removeprefix(prefix).lower(): v for k, v in passed.items()})
    assert (settings.max_batch, settings.queue_size, settings.max_streams) == (3, 5, 2)


def test_compose_publishes_the_service_on_loopback_unless_told(tmp_path: Path) -> None:
    assert _host_addresses(_resolved_serve(tmp_path, "PORT=8000\n")["ports"]) == ["127.0.0.1"]
    opened = _resolved_serve(tmp_path, "PORT=8000\nBIND_ADDRESS=0.0.0.0\n")
    assert _host_addresses(opened["ports"]) == ["0.0.0.0"]


def test_an_empty_api_key_in_env_reaches_the_service_as_an_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    serve = _resolved_serve(tmp_path, "DISTILWAVE_API_KEY=\n")
    assert serve["environment"]["DISTILWAVE_API_KEY"] == ""
    with pytest.raises(ValidationError, match="empty"):
        Settings(api_key="")


def test_gpu_override_reserves_gpus_and_runs_torchrun() -> None:
    gpu = _load(COMPOSE_GPU)["services"]
    assert set(gpu) == set(_load(COMPOSE)["services"])
    for name, service in gpu.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        if name != "serve":
            assert "shm_size" in service, name
    for name in ("train-prior", "train-teacher", "distill"):
        entrypoint = gpu[name]["entrypoint"]
        assert entrypoint[0] == "torchrun" and "--nproc-per-node" in entrypoint
        assert entrypoint[-2:] == ["-m", "distilwave.cli"]


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (".git/HEAD", True),
        (".venv/bin/python", True),
        ("data/corpus/a.wav", True),
        ("runs/cpu-8k/teacher/checkpoints/step-100.pt", True),
        ("artifacts/bundle/model.safetensors", True),
        ("tests/fixtures/audio/asterisk/a.wav", True),
        ("training/__pycache__/config.cpython-311.pyc", True),
        ("benchmarks/results/bench-1.json", True),
        ("pyproject.toml", False),
        ("training/config.py", False),
        ("distilwave/cli/__init__.py", False),
        ("benchmarks/run.py", False),
        ("configs/smoke.yaml", False),
        ("docker/healthcheck.py", False),
    ],
)
def test_dockerignore_keeps_data_checkpoints_venv_and_git_out(path: str, excluded: bool) -> None:
    assert _dockerignore_excludes(path) is excluded


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_is_healthy_only_when_readyz_is_200(
    probe_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch, status: int, healthy: bool
) -> None:
    monkeypatch.setattr(_Probe, "status", status)
    port = str(probe_server.server_address[1])
    script = str(ROOT / "docker" / "healthcheck.py")
    result = subprocess.run(
        [sys.executable, script], env={"DISTILWAVE_PORT": port}, timeout=30, check=False
    )
    assert (result.returncode == 0) is healthy


def test_requirements_script_splits_torch_from_the_rest() -> None:
    def listed(which: str) -> list[str]:
        script = str(ROOT / "docker" / "requirements.py")
        out = subprocess.run([sys.executable, script, which], capture_output=True, text=True)
        return out.stdout.split()

    declared = _load_pyproject()["project"]["dependencies"]
    torch, rest = listed("torch"), listed("rest")
    assert sorted(torch + rest) == sorted(declared)
    assert [re.split(r"[<>=]", r)[0] for r in torch] == ["torch", "torchaudio"]


def _load_pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())
