"""The reports in a real browser: headless Chromium, driven over the DevTools protocol, opens
the compile report (at a typical and a narrow viewport) and the study report, and checks from
the DOM and a screenshot that every chart and table is drawn, the axes carry labels with
units, and nothing is wider than the viewport.

Chromium is part of the test setup (`make test` installs Debian's `chromium` package when it
is missing); without it these tests fail, saying how to install it, rather than skip.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mapper.report import roof_at, roofline_points, roofline_roofs
from tests.conftest import run_mapper

INSTALL = ("Chromium is needed for the browser tests of the reports: install it with "
           "`apt-get install chromium` (as root), or run `make test`, which installs it")
SCREENSHOTS = os.environ.get("MAPPER_SCREENSHOTS")  # a folder to keep the screenshots in


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no chromium on PATH. {INSTALL}.", pytrace=False)


class Browser:
    """One headless Chromium process and one page, spoken to over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path):
        try:
            import websocket
        except ImportError:
            pytest.fail("the browser tests need websocket-client: pip install -e '.[dev]' "
                        "(or make test)", pytrace=False)
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions",
             "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace")[-2000:]
                pytest.fail(f"chromium exited with {self.process.returncode}: {error}",
                            pytrace=False)
            if time.monotonic() > deadline:
                self.close()
                pytest.fail("chromium did not open its DevTools port in 60 s", pytrace=False)
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            target = json.load(response)
        self.socket = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60,
                                                  suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} in {timeout} s")
            self.socket.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.socket.recv()))

    def open(self, url: str, width: int, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    def screenshot(self, max_height: int = 8000) -> bytes:
        """The whole page (up to `max_height` CSS pixels) as a PNG."""
        import base64

        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"],
                "height": min(size["height"], max_height), "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        sock = getattr(self, "socket", None)
        if sock is not None:
            sock.close()
        # Chromium runs in a session of its own: end its helper processes too, so that none
        # outlives the test or keeps writing to the profile.
        _signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _signal_group(group: int, sig: signal.Signals) -> None:
    """Send `sig` to every process of a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = _chromium()
    # Chromium's helper processes may still write to the profile for a moment after the
    # browser exits: a leftover file there must not fail the run.
    with tempfile.TemporaryDirectory(prefix="mapper-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        session = Browser(binary, Path(profile))
        try:
            yield session
        finally:
            session.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1, and its base URL."""
    root = tmp_path_factory.mktemp("site")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def resnet_small() -> str:
    import models

    return str(models.build("resnet_small"))


@pytest.fixture(scope="module")
def compiled(site, resnet_small) -> tuple[str, dict[str, Any]]:
    """A compile of the reference CNN for a100, and its plan."""
    root, base = site
    result = run_mapper("compile", resnet_small, "--hw", "a100", "-o", str(root / "compile"))
    assert result.code == 0, result.stderr
    plan = json.loads((root / "compile" / "plan.json").read_text())
    return f"{base}/compile/report.html", plan


@pytest.fixture(scope="module")
def study(site, resnet_small) -> str:
    root, base = site
    result = run_mapper("study", resnet_small, "--hw", "a100,h100", "--sweep",
                        "memory.l2.size=20MiB,40MiB", "-o", str(root / "study"), "--no-cache")
    assert result.code == 0, result.stderr
    return f"{base}/study/report.html"


# Runs in the page: opens every <details>, then measures. Elements inside a container that
# scrolls sideways are the container's business (it is checked itself), everything else must
# end inside the viewport.
_MEASURE = r"""
(async () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const width = document.documentElement.clientWidth;
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className : '') +
    ' "' + (el.textContent || '').trim().slice(0, 40) + '"';
  const scrolls = el => { const o = getComputedStyle(el).overflowX;
                          return o === 'auto' || o === 'scroll' || o === 'hidden'; };
  const clipped = el => { for (let p = el.parentElement; p && p !== document.body;
                               p = p.parentElement) { if (scrolls(p)) return true; }
                          return false; };
  const overflow = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if ((r.width || r.height) && r.right > width + 0.5 && !clipped(el))
      overflow.push(name(el) + ' right=' + Math.round(r.right));
  }
  const size = el => { const r = el.getBoundingClientRect();
                       return [Math.round(r.width), Math.round(r.height)]; };
  const svgs = [...document.querySelectorAll('svg')].map(svg => ({
    label: svg.getAttribute('aria-label') || '', size: size(svg),
    shapes: svg.querySelectorAll('rect,circle,line,polyline,path').length,
    texts: [...svg.querySelectorAll('text')].map(t => t.textContent),
    cut: [...svg.querySelectorAll('text')].filter(t => {
      const box = svg.getBoundingClientRect(), r = t.getBoundingClientRect();
      return r.width && (r.left < box.left - 1 || r.right > box.right + 1 ||
                         r.top < box.top - 1 || r.bottom > box.bottom + 1);
    }).map(t => t.textContent),
    ticks: [...svg.querySelectorAll('text.tick')].map(t => t.textContent),
    axes: [...svg.querySelectorAll('text.axis')].map(t => t.textContent)}));
  const tables = [...document.querySelectorAll('table')].map(t => ({
    size: size(t), rows: t.rows.length, text: (t.rows[0] || {}).textContent || ''}));
  const images = [...document.images].map(img => ({
    src: img.getAttribute('src'), size: size(img), natural: img.naturalWidth,
    complete: img.complete}));
  const scrollers = [...document.querySelectorAll('.scroll')].map(el => ({
    scrolls: el.scrollWidth > el.clientWidth + 1, text: name(el)}));
  return {width, scrollWidth: document.documentElement.scrollWidth, overflow, svgs, tables,
          images, scrollers, headings: [...document.querySelectorAll('h2')].map(h =>
            h.textContent), text: document.body.innerText};
})()
"""


def _measure(browser: Browser, url: str, width: int, name: str) -> dict[str, Any]:
    browser.open(url, width)
    page = browser.evaluate(_MEASURE)
    png = browser.screenshot()
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SCREENSHOTS) / f"{name}-{width}.png").write_bytes(png)
    page["png"] = png
    return page


def _assert_fits_and_drawn(page: dict[str, Any]) -> None:
    assert page["scrollWidth"] <= page["width"], (
        f"the page is {page['scrollWidth']} px wide in a {page['width']} px viewport")
    assert not page["overflow"], f"elements past the viewport's right edge: {page['overflow']}"
    assert page["tables"], "no table drawn"
    for table in page["tables"]:
        assert table["size"][0] > 0 and table["size"][1] > 0 and table["rows"] > 0, table
    for svg in page["svgs"]:
        assert svg["size"][0] > 0 and svg["size"][1] > 0 and svg["shapes"] > 0, svg
        assert not svg["cut"], f"text cut off at the edge of {svg['label']!r}: {svg['cut']}"
    for image in page["images"]:
        assert image["complete"] and image["natural"] > 0 and image["size"][0] > 0, image
    _assert_not_blank(page["png"], page["width"])


def _assert_not_blank(png: bytes, width: int) -> None:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width == width and image.height > 600, image.size
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, f"the screenshot has {len(colors)} colours: a blank page"
    ink = sum(count for count, rgb in colors if sum(rgb) < 600)
    assert ink > 0.005 * image.width * image.height, "the screenshot is almost all background"


def _chart(page: dict[str, Any], words: str) -> dict[str, Any]:
    found = [svg for svg in page["svgs"] if words in svg["label"]]
    assert found, f"no chart labelled {words!r}: {[svg['label'] for svg in page['svgs']]}"
    return found[0]


@pytest.mark.parametrize("width", [1280, 800])
def test_compile_report_in_chromium(browser, compiled, width):
    url, plan = compiled
    page = _measure(browser, url, width, "compile")
    _assert_fits_and_drawn(page)
    if width == 1280:
        # At a typical width no table needs its sideways scroll, the kernel table included.
        assert not [s for s in page["scrollers"] if s["scrolls"]], page["scrollers"]
    for heading in ("What to try next", "Kernels (tiling)", "Scratchpad memory", "Roofline",
                    "Operator time by type", "Activation arena"):
        assert heading in page["headings"], heading
    # The header says what the plan was compiled with.
    for words in ("precision", "--precision model", "x: 1x3x64x64", "--hw a100-80gb",
                  "skipped moe", "--seed 0", "scratchpad"):
        assert words in page["text"], words
    ran = page["text"].split("passes\tran ")[1]
    assert all(name in ran.split(";")[0] for name in ("tiling", "memory", "arena", "estimate"))
    roofline = _chart(page, "roofline")
    assert any("FLOP/byte" in text for text in roofline["axes"]), roofline["axes"]
    assert any("FLOP/s" in text for text in roofline["axes"]), roofline["axes"]
    assert len(roofline["ticks"]) >= 6, roofline["ticks"]
    assert any("B/s" in text for text in roofline["texts"])  # the bandwidth roofs say theirs
    assert any("peak" in text and "FLOP/s" in text for text in roofline["texts"])
    assert roofline["shapes"] > len(roofline_points(plan))
    timeline = _chart(page, "residency")
    assert any("step" in text for text in timeline["axes"]), timeline["axes"]
    assert any("address" in text for text in timeline["axes"]), timeline["axes"]
    assert any(text.endswith("B") for text in timeline["ticks"]), timeline["ticks"]
    bars = _chart(page, "operator time")
    assert any(text.rstrip(")").endswith("%") and "s (" in text for text in bars["texts"])


def test_moe_compile_report_in_chromium(browser, site):
    """The MoE sections (placement heat map, device traffic) at a narrow viewport."""
    import models

    root, base = site
    result = run_mapper("compile", str(models.build("moe_transformer")), "--hw", "h100",
                        "--devices", "4", "--time-limit", "5", "-o", str(root / "moe"))
    assert result.code == 0, result.stderr
    page = _measure(browser, f"{base}/moe/report.html", 800, "moe")
    _assert_fits_and_drawn(page)
    assert "MoE expert placement" in page["headings"]
    _chart(page, "expert placement")
    _chart(page, "device-to-device")


def test_study_report_in_chromium(browser, study):
    page = _measure(browser, study, 1280, "study")
    _assert_fits_and_drawn(page)
    assert page["images"], "the study report shows no plot"
    assert "Winner." in page["text"]
    narrow = _measure(browser, study, 800, "study")
    _assert_fits_and_drawn(narrow)


def test_no_point_above_the_drawn_roof(tmp_path, resnet_small):
    """The roofline draws the roofs that bound its points: each operator's dtype peak and the
    fastest memory that served its bytes (main memory, or the managed on-chip level where the
    memory plan kept them on chip). An NPU whose scratchpad serves most bytes and whose
    GEMMs are tiled at fp16 for an fp32 graph, and a GPU, both stay under them."""
    import models

    gpt = str(models.build("gpt_decoder"))
    cases = [(resnet_small, "edge-npu", []), (resnet_small, "a100", []),
             (gpt, "h100", ["--dim", "seq=64", "--precision", "fp16"])]
    for model, hardware, extra in cases:
        out = tmp_path / hardware
        result = run_mapper("compile", model, "--hw", hardware, *extra, "-o", str(out))
        assert result.code == 0, result.stderr
        plan = json.loads((out / "plan.json").read_text())
        ceilings, slopes = roofline_roofs(plan)
        points = roofline_points(plan)
        assert points
        above = [(p["node"], p["attained"], roof_at(p["intensity"], p["dtype"], ceilings, slopes))
                 for p in points
                 if p["attained"] > 1.001 * roof_at(p["intensity"], p["dtype"], ceilings, slopes)]
        assert not above, (hardware, above[:5])
        if hardware == "edge-npu":  # the scratchpad's roof is drawn, and needed
            assert set(slopes) == {"dram", "scratchpad"}
            assert any(p["attained"] > p["intensity"] * slopes["dram"] for p in points)


def test_without_chromium_the_tests_fail_saying_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install chromium.*make test"):
        _chromium()
