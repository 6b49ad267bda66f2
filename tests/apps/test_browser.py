"""The web app in a real browser: Debian's headless Chromium driven by Playwright through generate and edit.

Needs /usr/bin/chromium (`apt-get install -y chromium`, done by .ci/run) and the playwright package; never
`playwright install`. Screenshots go to the test's tmp_path, and also to $APP_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000  # a run on a busy CPU; the shapes-tiny runs below take a few seconds

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas calls
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)

from apps.gradio_app import AppConfig, build_app  # noqa: E402
from guidance.images import read_recipe  # noqa: E402


def free_port() -> int:
    """A localhost port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    """The app on a free localhost port, on CPU with the shapes-tiny models (its defaults)."""
    blocks = build_app(AppConfig(device="cpu", output_dir=tmp_path_factory.mktemp("browser-results")))
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    """Debian's Chromium, headless."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url) -> Iterator[sync_api.Page]:
    """A fresh page on the app, loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea")
    yield page
    context.close()


def screenshot(page: sync_api.Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in tmp_path, copied to $APP_SCREENSHOTS when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    if os.environ.get("APP_SCREENSHOTS"):
        target = Path(os.environ["APP_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def set_slider(page: sync_api.Page, elem_id: str, value: int) -> None:
    """Type a value into a slider's number box."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def upload_photo(page: sync_api.Page, path: Path) -> None:
    """Upload a photo into the image editor, once its canvas is ready (again if the first upload was dropped)."""
    page.locator("#editor canvas").first.wait_for()
    placeholder = page.get_by_text("Upload an image")
    for attempt in range(3):
        page.locator("#editor input[type=file]").set_input_files(path)
        try:
            placeholder.wait_for(state="hidden", timeout=15_000)
            return
        except sync_api.TimeoutError:
            if attempt == 2:
                raise


def download(page: sync_api.Page, panel: str, tmp_path: Path) -> Path:
    """Click the first download link of a result panel; the file the browser saved."""
    with page.expect_download() as info:
        page.locator(f"#{panel}-download a").first.click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_generate_streams_and_downloads_the_png_with_its_recipe(page, tmp_path):
    page.fill("#prompt textarea", "a red circle")
    page.fill("#negative textarea", "blue")
    set_slider(page, "steps", 12)
    set_slider(page, "cutn", 4)
    page.click("#generate")
    page.locator("#generate-preview img").wait_for()  # an intermediate (or the final) image streamed in
    page.locator("#generate-download a").first.wait_for()
    screenshot(page, tmp_path, "generate")

    assert page.locator("#generate-gallery img").count() == 1
    status = page.inner_text("#generate-status")
    assert "Done: 12 steps" in status and "Error" not in status
    recipe = read_recipe(download(page, "generate", tmp_path))
    assert recipe["prompt"] == "a red circle|blue:-1" and recipe["steps_done"] == 12 and recipe["cutn"] == 4
    assert page.input_value("#generate-seed input") == str(recipe["seed"])  # the random seed is shown

    # the gallery serves the original file too, recipe included
    gallery_file = tmp_path / "from-gallery.png"
    gallery_file.write_bytes(page.request.get(page.locator("#generate-gallery img").first.get_attribute("src")).body())
    assert read_recipe(gallery_file)["seed"] == recipe["seed"]


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, tmp_path):
    page.click("#generate")  # empty prompt
    page.locator("#generate-status", has_text="the prompt is empty").wait_for()
    assert page.get_by_text("Traceback").count() == 0
    screenshot(page, tmp_path, "empty-prompt")
    page.fill("#prompt textarea", "a green triangle")
    set_slider(page, "steps", 2)
    page.click("#generate")
    page.locator("#generate-status", has_text="Done: 2 steps").wait_for()


def test_picking_a_method_switches_the_model_picker_and_runs_it(page, tmp_path):
    assert page.input_value("#generate-model input") == "shapes-tiny"  # VQGAN-CLIP's packaged model
    page.locator("#generate-method").get_by_text("Pixels-CLIP").click()
    page.wait_for_function("document.querySelector('#generate-model input').value === 'fft'")
    page.fill("#prompt textarea", "a red circle")
    page.fill("#size textarea", "32")
    set_slider(page, "steps", 3)
    set_slider(page, "cutn", 4)
    page.click("#generate")
    page.locator("#generate-status", has_text="Done: 3 steps").wait_for()
    screenshot(page, tmp_path, "pixels-clip")
    recipe = read_recipe(download(page, "generate", tmp_path))
    assert recipe["pipeline"] == "pixels_clip" and recipe["parameterization"] == "fft"
    assert recipe["command"].startswith("python -m pipelines.pixels_clip 'a red circle' --parameterization fft")


def test_edit_with_a_drawn_mask(page, tmp_path):
    photo = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(photo).ellipse((16, 16, 47, 47), fill=(220, 30, 30))
    photo.save(tmp_path / "photo.png")

    page.get_by_role("tab", name="Edit an image").click()
    upload_photo(page, tmp_path / "photo.png")
    canvas = page.locator("#editor canvas").first.bounding_box()
    centre_x, centre_y = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(centre_x - 30, centre_y)  # a short horizontal brush stroke across the middle
    page.mouse.down()
    page.mouse.move(centre_x + 30, centre_y, steps=10)
    page.mouse.up()
    screenshot(page, tmp_path, "edit-drawn")

    page.fill("#target textarea", "a blue circle")
    set_slider(page, "edit-steps", 8)
    set_slider(page, "edit-cutn", 4)
    page.click("#edit")
    page.locator("#edit-download a").first.wait_for()
    screenshot(page, tmp_path, "edit-done")

    assert "Done: 8 steps" in page.inner_text("#edit-status")
    assert page.locator("#edit-gallery img").count() == 1
    result = download(page, "edit", tmp_path)
    recipe = read_recipe(result)
    assert recipe["prompt"] == "a blue circle" and recipe["size"] == "64x64" and recipe["steps_done"] == 8
    assert "--mask mask.png" in recipe["command"]
    mask = np.asarray(Image.open(recipe["mask"])) > 0
    assert mask[32, 32] and not mask[0, 0] and not mask[63, 63]  # painted in the middle only
    init = np.asarray(Image.open(recipe["init_image"]).convert("RGB")).astype(int)
    assert np.abs(init - np.asarray(photo).astype(int)).mean() < 2  # the uploaded photo arrived intact
    edited = np.asarray(Image.open(result).convert("RGB")).astype(int)
    assert np.abs(edited - init)[~mask].max() <= 1  # unpainted pixels kept
