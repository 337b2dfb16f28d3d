"""The layout holds: the service and ``distilwave serve`` never need the training code, and the
public Python name is a thin facade over ``models``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK_TRAINING = "import sys; sys.modules['training'] = None; sys.modules['benchmarks'] = None; "


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_importing_the_service_imports_no_training_code():
    done = _python(
        "import sys, service.app, service.loadtest, distilwave; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'benchmarks')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_and_generate_work_where_the_training_code_is_absent():
    done = _python(
        BLOCK_TRAINING + "from distilwave.cli import app, main, _register; _register(); "
        "print(sorted(c.name or c.callback.__name__ for c in app.registered_commands))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['generate', 'serve']"
    done = _python(BLOCK_TRAINING + "from distilwave.cli import main; main(['serve', '--help'])")
    assert done.returncode == 0, done.stderr
    assert "--bundle" in done.stdout


def test_the_python_api_is_the_vocoder_of_models():
    import distilwave
    from models.vocoder import Vocoder, load

    assert distilwave.load is load and distilwave.Vocoder is Vocoder


def test_readme_states_every_limit_the_card_advertises():
    """Issue 14: the README's limits table names every limit of ``GET /v1/models``."""
    from service.schemas import Limits

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Limits, and what a client sees") :]
    names = {"max_mel_frames": "MAX_MEL_FRAMES", "formats": "ALLOWED_FORMATS"}
    for field in Limits.model_fields:
        assert f"`{names.get(field, field.upper())}`" in table, field
