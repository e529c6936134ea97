"""The web page in a real headless browser (Debian's chromium through playwright, nothing
downloaded): upload two images, watch progress events update the page, find the result.

ONNXSTYLE_SCREENSHOT=1 writes the screenshot to docs/serve/page.png (for the docs); without
it the screenshot goes to the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from serve_helpers import CONTENT, STYLE, Server, start_server

CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium as the CI installs it: no sandbox (containers), no GPU, and nothing that
# would reach the network on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "browser-token-9876"
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "serve" / "page.png"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(caffe_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(caffe_export, tmp_path_factory.mktemp("serve-page") / "data", "--workers", "1", token=TOKEN)
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does); the page test needs a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 760},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_the_page_uploads_follows_progress_and_offers_the_result(server: Server, page: object, tmp_path: Path) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    elsewhere: list[str] = []

    def only_loopback(route: object) -> None:  # the page must work offline: no CDN, no font
        request = route.request  # type: ignore[attr-defined]
        if urlparse(request.url).hostname not in ("127.0.0.1", "localhost") and not request.url.startswith(("blob:", "data:")):
            elsewhere.append(request.url)
            route.abort()  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    page.route("**/*", only_loopback)
    page.goto(server.url + "/")
    page.set_input_files("#content", str(CONTENT))
    page.set_input_files("#style", str(STYLE))
    page.fill("#size", "64")
    page.fill("#iterations", "40")

    # Without the token the server says so, and the page shows it.
    page.click("#submit")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('bearer token')")

    page.fill("#token", TOKEN)
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as posted:
        page.click("#submit")
    assert posted.value.status == 202
    job_id = posted.value.json()["id"]

    # Progress events move the page while the job runs: status, step counter, preview.
    page.wait_for_function(
        "() => document.querySelector('#status').textContent === 'running' && "
        "parseInt(document.querySelector('#step').textContent.split(' ')[1]) >= 3",
        timeout=60_000,
    )
    page.wait_for_function("() => document.querySelector('#preview').src.startsWith('blob:')", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#result').naturalWidth > 0", timeout=90_000)

    log = page.evaluate("() => window.onnxstyleLog")
    steps = [e["step"] for e in log if e["event"] == "progress"]
    assert steps == list(range(1, 41)), steps  # one event per evaluation, in order
    assert log[-1]["event"] == "done"
    assert page.inner_text("#status") == "done" and page.inner_text("#step") == "step 40 / 40"
    assert int(page.inner_text("#events")) == len(log)
    assert page.evaluate("() => [document.querySelector('#result').naturalWidth, document.querySelector('#result').naturalHeight]") == [64, 48]
    assert page.evaluate("() => document.querySelector('#preview').naturalWidth") == 64
    assert page.is_visible("#download")
    downloaded = bytes(page.evaluate(
        "async () => Array.from(new Uint8Array(await (await fetch(document.querySelector('#download').href)).arrayBuffer()))"
    ))
    with server.client() as c:
        assert downloaded == c.get(f"/v1/jobs/{job_id}/result").content  # the download is the result
    assert elsewhere == []

    shot = DOCS_SHOT if os.environ.get("ONNXSTYLE_SCREENSHOT") else tmp_path / "page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
