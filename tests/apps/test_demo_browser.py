"""End to end: the Gradio demo on a free local port, driven in headless Chromium with Playwright.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` Python package (the
``dev`` extra). Without a browser the test is skipped, unless ``ERASER_BROWSER_TEST=required``
(set by ``.ci/run``), where a missing browser is a failure.
"""

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from apps.demo.app import build_app
from apps.demo.session import BUNDLED, DemoConfig, Limits

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("ERASER_BROWSER_TEST") == "required"
TIMEOUT = 120_000  # ms; generation on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    missing = (
        "chromium (apt-get install chromium)"
        if CHROMIUM is None
        else "playwright (pip install -e '.[dev]')"
        if sync_playwright is None
        else None
    )
    if missing:
        if REQUIRED:
            pytest.fail(f"ERASER_BROWSER_TEST=required but {missing} is missing")
        pytest.skip(f"the browser test needs {missing}")
    config = DemoConfig(models={"digits": BUNDLED}, steps=3, limits=Limits(max_images=4))
    app = build_app(config)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        page.set_default_timeout(TIMEOUT)
        page.goto(url)
        yield page
        browser.close()


def _fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)


def _gallery_bytes(page, elem_id: str, n: int) -> list[bytes]:
    imgs = page.locator(f"#{elem_id} img")
    imgs.nth(n - 1).wait_for()
    assert imgs.count() >= n
    out = []
    for i in range(n):
        src = imgs.nth(i).get_attribute("src")
        out.append(page.request.get(src).body())
    return out


RUNS = {"n": 0}


def _generate(page, n: int = 4) -> tuple[list[bytes], list[bytes]]:
    """Click Generate, wait for this run's note (the galleries arrive with it); the images' bytes."""
    RUNS["n"] += 1
    page.click("#generate")
    page.locator("#gen-note").get_by_text(f"Run {RUNS['n']}:", exact=False).wait_for()
    return _gallery_bytes(page, "original", n), _gallery_bytes(page, "erased", n)


def _status(page, expect: str) -> str:
    page.locator("#status").get_by_text(expect, exact=False).wait_for()
    return page.locator("#status").inner_text()


ARTIFACTS = Path(os.environ.get("ERASER_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def test_bad_input_shows_a_message_and_changes_nothing(page, tmp_path):
    for concepts, k, expect in [
        ("", 0, "at least one concept"),
        ("seven", 1000, "got 1000"),
        ("seven", 2.5, "got 2.5"),
    ]:
        _fill(page, "concepts", concepts)
        _fill(page, "k", str(k))
        page.click("#erase")
        _status(page, expect)
    _fill(page, "k", "0")
    bad = tmp_path / "notes.txt"
    bad.write_text("not a patch")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.click("#apply-upload")
    page.get_by_text(re.compile(r"safetensors|Invalid file type", re.I)).first.wait_for()
    _fill(page, "prompt", "seven " * 50)
    page.click("#generate")
    page.locator("#gen-note").get_by_text("at most 200 characters", exact=False).wait_for()
    assert "No erasures yet" in page.locator("#stack").inner_text()
    _fill(page, "prompt", "a photo of the digit seven")
    original, erased = _generate(page)
    assert original == erased  # nothing was erased by any of it


def test_erase_generate_download_upload_revert(page, tmp_path):
    _fill(page, "concepts", "seven, 7")
    page.click("#erase")
    msg = _status(page, "Erased in")
    assert "KB" in msg
    assert "Unlink: seven, 7" in page.locator("#stack").inner_text()

    _fill(page, "prompt", "a photo of the digit seven")
    _fill(page, "seeds", "0,1,2,3")
    original, erased = _generate(page)
    assert original != erased  # the two galleries render and differ

    # download the patch, revert, re-upload it: the same erased images come back
    link = page.locator("#download a").first
    with page.expect_download() as info:
        link.click()
    patch = tmp_path / "patch.safetensors"
    info.value.save_as(patch)
    assert patch.stat().st_size > 0

    page.click("#revert")
    _status(page, "Reverted")
    reverted_original, reverted = _generate(page)
    assert reverted == reverted_original

    page.locator("#upload input[type=file]").set_input_files(str(patch))
    page.click("#apply-upload")
    _status(page, "Applied the uploaded patch")
    _, again = _generate(page)
    assert again == erased
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)


def test_check_tab_runs_the_judge(page):
    page.get_by_role("tab", name="Check").click()
    page.click("#check")
    note = page.locator("#check-note").get_by_text("accuracy on the other digits", exact=False)
    note.wait_for()
    assert "UA on 7" in page.locator("#check-note").inner_text()
    page.get_by_role("tab", name="Erase").click()


def test_api_with_gradio_client(url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    status, stack, download = client.predict("seven", "", "Unlink", 0, api_name="/erase")
    assert status.startswith("Erased in") and "seven" in stack and download.endswith(".safetensors")
    original, erased, note = client.predict("a photo of the digit seven", "0,1", api_name="/generate")
    assert len(original) == len(erased) == 2 and note.startswith("Run 1:")
    status, _, _ = client.predict("", "", "Unlink", 0, api_name="/erase")
    assert "at least one concept" in status
    status, stack, _ = client.predict(api_name="/revert")
    assert status.startswith("Reverted") and "No erasures" in stack
    status, stack, _ = client.predict(handle_file(download), api_name="/upload")
    assert status.startswith("Applied the uploaded patch") and "seven" in stack
    status, stack, _ = client.predict("three", "", "Unlink", 0, 1.5, api_name="/erase")  # not the default (2)
    assert status.startswith("Erased in") and "three strength 1.5" in stack
    status, _, _ = client.predict("four", "", "UCE", 0, 1.5, api_name="/erase")
    assert "Unlink only" in status
