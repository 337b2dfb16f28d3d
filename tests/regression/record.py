"""Record the regression reference (run once, before a refactor; kept to show how).

    .venv/bin/python -m tests.regression.record            # writes schema.json, reference.json

Records, for the fixture of ``tests/regression/fixture.py`` and fixed inputs, what every
inference path returned: the module (whole and streamed), the fast path (whole, streamed,
batched), the teacher's log-likelihood, conditionals and cached autoregressive sample, and the
HTTP service (real uvicorn, fast and exact modes) and the CLI. Arrays the comparison needs
whole are stored whole (float32 or int16, base64); the others as a hash and sampled values.
Recorded at commit 8fbb478 (distilwave 0.1.0, bundle format 1), before the one-cascade
redesign; ``test_regression.py`` checks today's code against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
import torch

from tests.regression.fixture import (
    CLIPS,
    REFERENCE,
    ROOT,
    SCHEMA,
    SEED,
    STD,
    STUDENT_SEED,
    TEACHER_SEED,
    TEMPERATURE,
    clip,
    materialise,
)

SAMPLED = 16


def whole(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array).tobytes()
    return {
        "dtype": str(array.dtype),
        "base64": base64.b64encode(data).decode(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def summary(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array).tobytes()
    index = np.linspace(0, array.size - 1, SAMPLED).round().astype(int)
    return {
        "dtype": str(array.dtype),
        "size": int(array.size),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sum": float(array.astype(np.float64).sum()),
        "sum_squares": float(np.square(array.astype(np.float64)).sum()),
        "positions": index.tolist(),
        "values": array.ravel()[index].tolist(),
    }


def build_schema() -> None:
    """The format-1 model's parameter names and shapes, its bundle config and card."""
    from models.bundle import save_bundle
    from models.config import (
        MelConfig,
        PitchConfig,
        StudentConfig,
        TeacherConfig,
        UpsamplerConfig,
        WaveNetConfig,
    )
    from models.student import IAFStudent
    from models.teacher import GaussianWaveNet

    pitch, upsampler = PitchConfig(enabled=True, lag_taps=3), UpsamplerConfig(channels=8)
    small = {"residual_channels": 8, "gate_channels": 16, "skip_channels": 8}
    student = IAFStudent(
        StudentConfig(
            flows=2,
            wavenet=WaveNetConfig(layers=3, cycle=3, **small),
            upsampler=upsampler,
            pitch=pitch,
            mixed_excitation=True,
        ),
        MelConfig(),
    )
    teacher_config = TeacherConfig(
        wavenet=WaveNetConfig(layers=4, cycle=4, **small), upsampler=upsampler, pitch=pitch
    )
    teacher = GaussianWaveNet(teacher_config, MelConfig())
    card = {"name": "regression-fixture", "license": "Apache-2.0"}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / "b", student, default_temperature=TEMPERATURE, card=card)
        config = json.loads((bundle / "config.json").read_text())
    schema = {
        "note": "distilwave 0.1.0 (bundle format 1) at commit 8fbb478; weights: seeded randn",
        "std": STD,
        "student_seed": STUDENT_SEED,
        "teacher_seed": TEACHER_SEED,
        "student_parameters": [[n, list(p.shape)] for n, p in student.named_parameters()],
        "teacher_parameters": [[n, list(p.shape)] for n, p in teacher.named_parameters()],
        "teacher_config": {"teacher": teacher_config.model_dump(), "mel": MelConfig().model_dump()},
        "bundle_config": config,
        "bundle_card": card,
    }
    SCHEMA.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record_models(bundle_dir: Path, teacher_state: dict, teacher_config: dict) -> dict:
    from service.batching import stack_contexts, stack_noise

    from models.audio import normalize_loudness
    from models.bundle import load_bundle
    from models.config import MelConfig, TeacherConfig
    from models.inference import InferenceStudent
    from models.teacher import GaussianWaveNet

    torch.backends.mkldnn.enabled = False  # as the service's exact mode runs
    student = load_bundle(bundle_dir).student
    fast = InferenceStudent(student)
    out: dict = {}
    contexts, noises = [], []
    with torch.inference_mode():
        for index, (name, samples) in enumerate(CLIPS):
            scaled, _ = normalize_loudness(clip(name, samples), 8000, -23.0, 0.95)
            context = student.context(mel=student.front_end(scaled[None]))
            generator = torch.Generator().manual_seed(100 + index)
            noise = torch.randn(1, context.num_samples, generator=generator) * TEMPERATURE
            contexts.append(context)
            noises.append(noise)
            key = name.removesuffix(".wav")
            out[f"{key}/module"] = whole(student.generate(context, noise=noise)[0].numpy())
            streamed = torch.cat(list(student.stream(context, noise, 300)), 1)[0]
            out[f"{key}/module_stream_300"] = summary(streamed.numpy())
            out[f"{key}/fast"] = summary(fast.generate(context, noise=noise)[0].numpy())
            streamed = torch.cat(list(fast.stream(context, noise, 300)), 1)[0]
            out[f"{key}/fast_stream_300"] = summary(streamed.numpy())
        batched = fast.generate(stack_contexts(contexts), noise=stack_noise(noises))
        for index, (name, samples) in enumerate(CLIPS):
            key = name.removesuffix(".wav")
            out[f"{key}/fast_batched"] = summary(batched[index, :samples].numpy())
        teacher = GaussianWaveNet(
            TeacherConfig.model_validate(teacher_config["teacher"]),
            MelConfig.model_validate(teacher_config["mel"]),
        )
        teacher.load_state_dict(teacher_state)
        teacher.eval()
        scaled, _ = normalize_loudness(clip(*CLIPS[0]), 8000, -23.0, 0.95)
        for dtype in (torch.float32, torch.float64):
            model = teacher.to(dtype)
            x = scaled[None].to(dtype)
            context = model.context(mel=model.front_end(x))
            tag = str(dtype).removeprefix("torch.")
            out[f"teacher/log_prob/{tag}"] = float(model.log_prob(x, context)[0])
            mean, log_scale = model.conditionals(x, context)
            out[f"teacher/conditionals/{tag}"] = summary(
                torch.stack([mean[0], log_scale[0]]).numpy()
            )
        teacher.float()
        context = teacher.context(mel=teacher.front_end(scaled[None, :600]))
        noise = torch.randn(1, 600, generator=torch.Generator().manual_seed(9)) * 0.5
        out["teacher/sample_cached"] = whole(teacher.sample(context, noise=noise)[0].numpy())
    return out


def record_service_and_cli(bundle_dir: Path, out: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        soundfile.write(path, clip(*CLIPS[0]).numpy(), 8000, subtype="FLOAT")
        for mode in ("fast", "exact"):
            port = free_port()
            env = {
                **os.environ,
                "DISTILWAVE_BUNDLE": str(bundle_dir),
                "DISTILWAVE_TORCH_THREADS": "1",
                "DISTILWAVE_EXACT": str(mode == "exact"),
            }
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "service.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                for _ in range(600):
                    try:
                        if httpx.get(base + "/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                form = {
                    "seed": str(SEED),
                    "temperature": str(TEMPERATURE),
                    "response_format": "pcm",
                }
                for stream in (False, True):
                    with open(path, "rb") as handle:
                        response = httpx.post(
                            base + "/v1/audio/resynthesize",
                            files={"file": ("clip.wav", handle, "audio/wav")},
                            data={**form, "stream": str(stream).lower()},
                            timeout=60,
                        )
                    response.raise_for_status()
                    pcm = np.frombuffer(response.content, dtype="<i2")
                    key = f"service/{mode}/resynthesize" + ("_stream" if stream else "")
                    out[key] = whole(pcm) if (mode, stream) == ("fast", False) else summary(pcm)
            finally:
                server.terminate()
                server.wait(30)
        result = Path(tmp) / "out.wav"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.cli",
                "generate",
                "--bundle",
                str(bundle_dir),
                "--audio",
                str(path),
                "--out",
                str(result),
                "--seed",
                str(SEED),
                "--temperature",
                str(TEMPERATURE),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        samples, _ = soundfile.read(result, dtype="int16")
        out["cli/generate"] = whole(samples)


def main() -> None:
    build_schema()
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir, teacher_state, teacher_config = materialise(Path(tmp) / "bundle-v1")
        out = record_models(bundle_dir, teacher_state, teacher_config)
        record_service_and_cli(bundle_dir, out)
    REFERENCE.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print("recorded", len(out), "entries")  # noqa: T201


if __name__ == "__main__":
    main()
