"""The demo page at ``/``: served open while ``/v1`` needs the key, and driven end to end in
a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through Selenium)
against a real uvicorn on loopback serving a bundle the smoke pipeline trained and exported.

Chromium comes from ``make system-deps`` (apt-get, run by ``make test``); without it the
browser test fails, saying so. It leaves a full-page screenshot in its tmp dir and
at /tmp/distilwave-demo.png (printed; run with ``-s`` to see the path).
"""

from __future__ import annotations

import base64
import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from models.bundle import save_bundle
from models.config import SourceFilterConfig
from tests.service.conftest import SPEAKERS, running, settings_for, tiny_student
from tests.service.test_server import free_port, server, uvicorn_command
from tests.training.pipeline.support import FIXTURE_CORPUS, SmokeRun, tail

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "demo-page-key"
SCREENSHOT_COPY = Path("/tmp/distilwave-demo.png")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a fake mic
]  # fmt: skip


# ---- Without a browser: the page is open, the API is not, timings are in the headers ----


@pytest.mark.anyio
async def test_page_and_static_files_are_open_while_v1_needs_the_key(bundles):
    settings = settings_for(bundles["cond"], api_key=API_KEY)
    async with running(settings) as (client, _):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in (
            "/static/app.js",
            "/static/card.js",
            "/static/spectrogram.js",
            "/static/style.css",
        ):
            assert (await client.get(asset)).status_code == 200, asset
            assert asset in page.text
        assert (await client.get("/v1/models")).status_code == 401
        assert "/" not in (await client.get("/openapi.json")).json()["paths"]


@pytest.mark.anyio
async def test_audio_responses_carry_generation_and_audio_seconds(bundles, speech):
    async with running(settings_for(bundles["cond"])) as (client, _):
        upload = {"file": ("clip.wav", speech[0].read_bytes())}
        response = await client.post("/v1/audio/resynthesize", files=upload)
    assert response.status_code == 200
    samples = soundfile.info(io.BytesIO(response.content)).frames
    assert float(response.headers["X-Audio-Seconds"]) == pytest.approx(samples / 8000, abs=1e-4)
    assert 0 < float(response.headers["X-Generation-Seconds"]) < 30


# ---- In Chromium --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_bundle(smoke_pipeline: SmokeRun) -> Path:
    """A real bundle: the session's ``distilwave pipeline --preset smoke`` run on the speech
    fixtures (tests/conftest.py; shared with the pipeline tests)."""
    if smoke_pipeline.process.returncode != 0:
        pytest.fail(f"the smoke pipeline failed:\n{tail(smoke_pipeline.process.stderr)}")
    return smoke_pipeline.bundle


@pytest.fixture(scope="module")
def demo_server(smoke_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn on loopback serving the smoke bundle, with an API key."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo-uvicorn") / "server.log"
    env = {"DISTILWAVE_BUNDLE": str(smoke_bundle), "DISTILWAVE_API_KEY": API_KEY}
    with server(uvicorn_command(port), env, log, port) as (_, url):
        yield url


@pytest.fixture(scope="module")
def speakers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn on loopback serving a tiny unconditional three-speaker bundle, no API key."""
    root = tmp_path_factory.mktemp("demo-speakers")
    student = tiny_student(
        4, conditional=False, n_speakers=3, source_filter=SourceFilterConfig(enabled=False)
    )
    bundle = save_bundle(root / "bundle", student, speakers=SPEAKERS, card={"name": "speakers"})
    port = free_port()
    env = {"DISTILWAVE_BUNDLE": str(bundle)}
    with server(uvicorn_command(port), env, root / "server.log", port) as (_, url):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a fresh profile and a fake microphone."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"no {CHROMIUM} + {CHROMEDRIVER}: run 'make system-deps' as root")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for failures
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], what: str, driver: Any = None, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and, given the
    driver, what the page's status and error lines and the browser's console said."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            page = ""
            if driver is not None:
                console = [entry["message"] for entry in driver.get_log("browser")]
                page = (
                    f"\nstatus: {text(driver, 'status')!r}\nerror: {text(driver, 'error')!r}"
                    f"\nconsole: {console}"
                )
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{page}")
        time.sleep(0.1)


PLAYABLE = """
const audio = document.getElementById(arguments[0]);
return audio.src.startsWith("blob:") && audio.readyState >= 1 && audio.duration > 0
  ? audio.duration : 0;
"""
# Distinct colours in a canvas: a drawn spectrogram has hundreds, a blank canvas one.
COLOURS = """
const canvas = document.getElementById(arguments[0]);
if (canvas.dataset.rendered !== "true") return 0;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const seen = new Set();
for (let i = 0; i < data.length; i += 28) {
  seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
}
return seen.size;
"""
UNLABELLED = """
return [...document.querySelectorAll("input, select, textarea")]
  .filter((field) => field.type !== "hidden" && field.labels.length === 0)
  .map((field) => field.id || field.name);
"""


def text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').innerText"))


def history_rows(driver: Any) -> int:
    return int(driver.execute_script("return document.getElementById('history-rows').rows.length"))


def not_audio(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"  # an audio name, but text inside
    path.write_text("these are meeting notes, not audio\n" * 20)
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_page_in_chromium_resynthesizes_an_upload_and_explains_errors(
    browser, demo_server, speech, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(f"{demo_server}/")

    # Without the key the card cannot load: the page says so in plain words.
    error = wait_for(lambda: text(driver, "error"), "the missing-key error", driver)
    assert "needs an API key" in error and "401 invalid_api_key" in error
    assert driver.find_element(By.ID, "error").get_attribute("role") == "alert"
    assert driver.execute_script(UNLABELLED) == []
    assert driver.find_element(By.ID, "resynth-button").get_attribute("disabled") is not None

    # Keyboard: the first Tab reaches the skip link, the next the key field; Enter connects.
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "skip"
    driver.switch_to.active_element.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("id") == "api-key"
    driver.switch_to.active_element.send_keys(API_KEY, Keys.ENTER)
    wait_for(lambda: "8,000 Hz" in text(driver, "model-summary"), "the model summary", driver)
    assert text(driver, "error") == ""
    card = text(driver, "card")
    assert "Evaluation metrics" in card and "pesq" in card and "parameters" in card
    assert driver.find_element(By.ID, "generate-button").get_attribute("disabled") is not None
    assert driver.find_element(By.ID, "resynth-button").get_attribute("disabled") is None

    # Upload a real clip: both players get a playable source, both spectrograms are drawn.
    clip = FIXTURE_CORPUS / "hello-world.wav"
    driver.find_element(By.ID, "audio-file").send_keys(str(clip))
    driver.find_element(By.ID, "seed").send_keys("7")
    driver.find_element(By.ID, "resynth-button").click()
    seconds = soundfile.info(clip).duration
    for player in ("original-audio", "output-audio"):
        duration = wait_for(lambda p=player: driver.execute_script(PLAYABLE, p), player, driver)
        assert duration == pytest.approx(seconds, abs=0.02), player
    for canvas in ("original-spectrogram", "output-spectrogram"):
        assert wait_for(lambda c=canvas: driver.execute_script(COLOURS, c), canvas, driver) > 50
        assert "Spectrogram of the" in driver.find_element(By.ID, canvas).get_attribute(
            "aria-label"
        )
    # The server's timing, and the real-time factor from it.
    generation = float(text(driver, "stat-generation").removesuffix(" s"))
    audio = float(text(driver, "stat-audio").removesuffix(" s"))
    rtf = float(text(driver, "stat-rtf").split()[0])
    assert generation > 0 and audio == pytest.approx(seconds, abs=0.01)
    assert rtf == pytest.approx(generation / audio, rel=0.05, abs=1e-3)
    assert text(driver, "stat-seed") == "7" and history_rows(driver) == 1
    assert "real-time factor" in text(driver, "status")

    screenshot = tmp_path / "distilwave-demo.png"
    full_page_screenshot(driver, screenshot)

    # Record from the (fake) microphone: stop, and the recording is resynthesized.
    record = driver.find_element(By.ID, "record-button")
    record.click()
    wait_for(lambda: record.text == "Stop recording", "recording to start", driver)
    time.sleep(1.0)
    record.click()
    wait_for(lambda: history_rows(driver) == 2, "the recording's resynthesis", driver)
    assert "recording" in text(driver, "original-caption")
    assert wait_for(
        lambda: driver.execute_script(PLAYABLE, "output-audio"), "recording output", driver
    )

    # A file that is not audio: the server's 422 comes back in plain words.
    driver.find_element(By.ID, "audio-file").send_keys(str(not_audio(tmp_path)))
    driver.find_element(By.ID, "resynth-button").click()
    error = wait_for(lambda: text(driver, "error"), "the unsupported-format error", driver)
    assert "not audio the server can read" in error and "undecodable_audio" in error
    assert history_rows(driver) == 2
    full_page_screenshot(driver, tmp_path / "distilwave-demo-error.png")
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"\ndemo page screenshots: {screenshot} (copied to {SCREENSHOT_COPY})")  # noqa: T201


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_page_in_chromium_generates_with_a_speaker_from_an_unconditional_bundle(
    browser, speakers_server, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(f"{speakers_server}/")
    wait_for(lambda: "unconditional" in text(driver, "model-summary"), "the model summary", driver)
    assert driver.find_element(By.ID, "resynth-button").get_attribute("disabled") is not None
    assert not driver.find_element(By.ID, "original-clip").is_displayed()
    speaker = driver.find_element(By.ID, "speaker")
    assert speaker.is_displayed() and speaker.get_attribute("value") == SPEAKERS[0]

    for field, value in (("duration", "1.5"), ("temperature", "0.5"), ("seed", "11")):
        driver.find_element(By.ID, field).clear()
        driver.find_element(By.ID, field).send_keys(value)
    speaker.clear()
    speaker.send_keys(SPEAKERS[1])
    driver.find_element(By.ID, "duration").send_keys(Keys.ENTER)  # submits the Generate form
    duration = wait_for(
        lambda: driver.execute_script(PLAYABLE, "output-audio"), "the output", driver
    )
    assert duration == pytest.approx(1.5, abs=0.01)
    assert wait_for(
        lambda: driver.execute_script(COLOURS, "output-spectrogram"), "spectrogram", driver
    )
    assert text(driver, "output-title") == "Generated"
    assert text(driver, "stat-audio") == "1.50 s" and text(driver, "stat-seed") == "11"
    full_page_screenshot(driver, tmp_path / "distilwave-demo-generate.png")

    # A speaker the model does not have: the server's 422, in words that say what to change.
    speaker.clear()
    speaker.send_keys("dave")
    driver.find_element(By.ID, "generate-button").click()
    error = wait_for(lambda: text(driver, "error"), "the unknown-speaker error", driver)
    assert error.startswith("Choose a speaker") and "bob" in error
    assert history_rows(driver) == 1


def full_page_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window (Chromium's DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
