"""Drive Label Studio 1.23.2's labeling UI in headless Debian Chromium through Playwright (sync API).

Selectors and the order of UI steps follow ../shared/docs/ls-browser.md, which was checked in this browser:
the smart keypoint must be picked from the smart tool panel before the label, the label is deselected after
every click, negatives are Alt+click, a reply is a suggestion until accepted. Screenshots go to a folder the
caller names, numbered in the order taken, so a person can follow the steps.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the tests skip without playwright; keep this module importable

    class PlaywrightTimeout(Exception):  # type: ignore[no-redef]
        pass


REPO = Path(__file__).resolve().parents[1]
# The flags the research doc ran with: no sandbox (root in a container), no GPU, no network chatter.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}
UI_TIMEOUT_MS = 60_000
NEXT_PAGE = ".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)"
PREV_PAGE = ".lsf-pagination__btn_arrow-left:not(.lsf-pagination__btn_arrow-left-double)"
AUTO_ANNOTATION = '[data-testid="bottombar-auto-annotation-toggle"]'
AUTO_ACCEPT = '[data-testid="bottombar-auto-accept-toggle"]'
REGION_ROW = ".lsf-outliner-item"
ACCEPT = '[data-testid="bottombar-accept-suggestions-button"]'
REJECT = '[data-testid="bottombar-reject-suggestions-button"]'
SUBMIT = '[data-testid="bottombar-submit-button"]'


def chromium_executable() -> str | None:
    """Env DECAF_CHROMIUM, else Debian's `chromium` on PATH (Playwright then needs no browser download)."""
    if os.environ.get("DECAF_CHROMIUM"):
        return os.environ["DECAF_CHROMIUM"]
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot_dir(name: str) -> Path:
    """Env DECAF_SCREENSHOT_DIR/<name>, else <repo>/test-artifacts/browser/<name>; emptied first."""
    root = Path(os.environ.get("DECAF_SCREENSHOT_DIR") or REPO / "test-artifacts" / "browser")
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


@contextmanager
def chromium_context(executable: str | None = None) -> Iterator[Any]:
    """A persistent Playwright context on a fresh user-data-dir (Auto-Annotation starts off), removed afterwards."""
    from playwright.sync_api import sync_playwright

    exe = executable or chromium_executable()
    if exe is None:
        raise FileNotFoundError("no chromium: `apt-get install -y chromium` or set DECAF_CHROMIUM")
    user_data = tempfile.mkdtemp(prefix="decaf-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                user_data, executable_path=exe, headless=True, viewport=VIEWPORT, args=list(CHROMIUM_ARGS)
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(user_data, ignore_errors=True)


def label_group_index(label_config: str, control_name: str) -> int:
    """Position of a *Labels control among the config's label controls: the UI shows one `.lsf-labels` per control."""
    groups = [el.get("name") for el in ET.fromstring(label_config).iter() if el.tag.endswith("Labels")]
    if control_name not in groups:
        raise ValueError(f"no labels control '{control_name}' in the config (has {groups})")
    return groups.index(control_name)


@dataclass
class Box2D:
    """A screen rectangle in CSS pixels."""

    x: float
    y: float
    width: float
    height: float

    def intersect(self, other: Box2D) -> Box2D:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1 = min(self.x + self.width, other.x + other.width)
        y1 = min(self.y + self.height, other.y + other.height)
        return Box2D(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


@dataclass
class InteractiveCall:
    """One `/interactive-annotating` round trip the browser made: what it sent and what came back."""

    request: dict[str, Any]
    status: int
    response: dict[str, Any]

    @property
    def result(self) -> list[dict[str, Any]]:
        return list((self.response.get("data") or {}).get("result") or [])


@dataclass
class LabelingSession:
    """One browser page on a Label Studio server, with the steps an annotator takes and numbered screenshots."""

    page: Any
    base_url: str
    shots: Path
    calls: list[InteractiveCall] = field(default_factory=list)
    _step: int = 0

    def __post_init__(self) -> None:
        self.page.on("response", self._record)

    def _record(self, response: Any) -> None:
        if "/interactive-annotating" not in response.url or response.request.method != "POST":
            return
        with suppress(Exception):  # a page closing mid-request has no body: nothing to record
            self.calls.append(
                InteractiveCall(
                    json.loads(response.request.post_data or "{}"), response.status, response.json()
                )
            )

    # -- navigation -------------------------------------------------------------------------------------------
    def login(self, email: str, password: str) -> None:
        self.page.goto(self.base_url + "/user/login/")
        self.page.fill('input[name="email"]', email)
        self.page.fill('input[name="password"]', password)
        with self.page.expect_navigation():
            self.page.click('button[type="submit"]')
        if "/user/login" in self.page.url:
            raise AssertionError(f"login as {email} failed: still on {self.page.url}")

    def open_task(
        self, project_id: int, task_id: int, ready: str = ".lsf-pagination__page-indicator"
    ) -> None:
        """The labeling view of one task; `ready` is a selector that shows once the task's object is drawn."""
        self.page.goto(f"{self.base_url}/projects/{project_id}/data?task={task_id}")
        self.page.wait_for_selector(ready, state="visible")
        self.page.wait_for_selector(SUBMIT, state="visible")
        self.settle()

    def settle(self, seconds: float = 1.0) -> None:
        """Let Konva redraw: the canvas has no 'done' signal (the doc saw the UI ready ~2 s after the pager)."""
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_timeout(seconds * 1000)

    # -- frame pages (<Image valueList>) ----------------------------------------------------------------------
    def page_position(self) -> tuple[int, int]:
        """(1-based page, number of pages) from the pager's "k of n"."""
        text = self.page.locator(".lsf-pagination__page-indicator").inner_text()
        m = re.search(r"(\d+)\s*of\s*(\d+)", text)
        if not m:
            raise AssertionError(f"unreadable pager text {text!r}")
        return int(m.group(1)), int(m.group(2))

    def go_to_page(self, index: int) -> None:
        """Page to the 0-based frame `index` with the pager's arrows, as an annotator does."""
        current, total = self.page_position()
        if not 0 <= index < total:
            raise ValueError(f"frame {index} is outside the task's {total} pages")
        while current != index + 1:
            self.page.click(NEXT_PAGE if current < index + 1 else PREV_PAGE)
            self.page.wait_for_function(
                "(want) => { const e = document.querySelector('.lsf-pagination__page-indicator');"
                " const m = e && e.innerText.match(/(\\d+)\\s*of/); return m && m[1] === want; }",
                arg=str(current + (1 if current < index + 1 else -1)),
            )
            current = self.page_position()[0]
        self.page.mouse.move(10, VIEWPORT["height"] / 2)  # no "Next Image" tooltip over the frame
        self.page.locator(".lsf-image img").first.wait_for(state="visible")
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.lsf-image img')].every(i => i.complete)"
        )
        self.settle(0.7)

    # -- where the frame is on screen -------------------------------------------------------------------------
    def image_box(self) -> Box2D:
        """Where the frame is drawn: the <img> is clipped away but keeps the transform of the Konva canvas that
        draws the frame and its masks, so its box maps frame pixels to the screen (and clicks to percents)."""
        box = self.page.locator(".lsf-image img").first.bounding_box()
        if box is None:
            raise AssertionError("the frame image is not on screen")
        return Box2D(**box)

    def visible_image_box(self) -> Box2D:
        """The part of the frame the view shows: the image is drawn larger than its view and clipped by it
        (page 1 centred, later pages from the top-left corner), so intersect it with every clipping ancestor."""
        clips = self.page.locator(".lsf-image img").first.evaluate(
            """img => { const out = [];
              for (let e = img.parentElement; e; e = e.parentElement)
                if (getComputedStyle(e).overflow !== 'visible') {
                  const r = e.getBoundingClientRect(); out.push([r.x, r.y, r.width, r.height]); }
              return out; }"""
        )
        box = self.image_box()
        for clip in clips:
            box = box.intersect(Box2D(*clip))
        return box

    def frame_pixels(
        self, step: int = 4
    ) -> tuple[np.ndarray, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """A screenshot of the visible frame as (h, w, 3) uint8, a map from frame pixels (u, v) to its rows/cols,
        and an (h, w) bool array: True where nothing (toolbar, zoom slider, pill) covers the image.

        The map lets a test compare what is drawn with a mask decoded from the API, whatever the zoom.
        """
        from PIL import Image

        img, vis = self.image_box(), self.visible_image_box()
        shot = self.page.screenshot(clip={"x": vis.x, "y": vis.y, "width": vis.width, "height": vis.height})
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        natural = self.page.locator(".lsf-image img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        sx = pixels.shape[1] / vis.width  # device pixels per CSS pixel
        sy = pixels.shape[0] / vis.height
        grid = self.page.evaluate(
            """([x0, y0, w, h, step]) => {
              const img = document.querySelector('.lsf-image img');
              let host = img.parentElement;  // the frame is drawn by the Konva canvas next to the (hidden) <img>
              while (host && !host.querySelector('.konvajs-content')) host = host.parentElement;
              const rows = [];
              for (let y = y0 + step / 2; y < y0 + h; y += step) { let row = '';
                for (let x = x0 + step / 2; x < x0 + w; x += step) {
                  const e = document.elementFromPoint(x, y);
                  const ok = e && host && host.contains(e) && (e.tagName === 'CANVAS' || e.closest('.lsf-image'));
                  row += ok ? '1' : '0'; }
                rows.push(row); }
              return rows; }""",
            [vis.x, vis.y, vis.width, vis.height, step],
        )
        coarse = np.array([[c == "1" for c in row] for row in grid], dtype=bool)
        rr = np.minimum((np.arange(pixels.shape[0]) / sy / step).astype(int), coarse.shape[0] - 1)
        cc = np.minimum((np.arange(pixels.shape[1]) / sx / step).astype(int), coarse.shape[1] - 1)
        unobstructed = coarse[rr][:, cc]

        def to_shot(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = img.x + (u + 0.5) * img.width / natural[0]
            y = img.y + (v + 0.5) * img.height / natural[1]
            return np.floor((y - vis.y) * sy).astype(int), np.floor((x - vis.x) * sx).astype(int)

        return pixels, to_shot, unobstructed

    # -- smart clicks ------------------------------------------------------------------------------------------
    def ready_for_clicks(self, index: int) -> None:
        """On frame `index`, hide the masks (a click on a mask selects it) and switch Auto-Annotation on."""
        self.go_to_page(index)
        self.set_regions_hidden(True)
        self.enable_auto_annotation()

    def enable_auto_annotation(self) -> None:
        """Switch the bottom bar's Auto-Annotation on (it only exists with an interactive ML backend connected)."""
        toggle = self.page.locator(AUTO_ANNOTATION)
        toggle.wait_for(state="attached")
        if not toggle.is_checked():
            toggle.click(force=True)
        self.page.wait_for_selector(".lsf-toolbar__group > .lsf-tool_smart", state="visible")

    def enable_auto_accept(self) -> None:
        """Switch "Auto-Accept Suggestions" on (shown once Auto-Annotation is on; the browser remembers it in
        localStorage, there is no project setting): a reply then becomes regions at once, no accept click."""
        toggle = self.page.locator(AUTO_ACCEPT)
        toggle.wait_for(state="attached")
        if not toggle.is_checked():
            toggle.click(force=True)
        self.page.wait_for_function(
            "(sel) => { const e = document.querySelector(sel); return e && e.checked; }", arg=AUTO_ACCEPT
        )

    def pick_smart_keypoint(self) -> None:
        """Choose the smart keypoint in the magic-wand panel (clicking the group itself picks the smart brush)."""
        self.page.locator(".lsf-toolbar__group > .lsf-tool_smart").first.hover()
        self.page.locator('.lsf-toolbar__smart button[aria-label="key-point-tool"]').click()
        self.page.mouse.move(10, VIEWPORT["height"] / 2)  # close the panel
        self.page.wait_for_selector(".lsf-tool_active.lsf-tool_smart")

    def select_label(self, text: str, group: int | None = None) -> None:
        """Select a label; `group` is the control's index among label controls (label_group_index)."""
        scope = self.page.locator(".lsf-labels").nth(group) if group is not None else self.page
        label = scope.locator(
            ".lsf-label",
            has=self.page.locator(".lsf-label__text", has_text=re.compile(f"^{re.escape(text)}$")),
        )
        label.first.click()
        self.page.wait_for_selector(".lsf-label_selected")

    def smart_click(
        self,
        x_pct: float,
        y_pct: float,
        label: str,
        group: int | None = None,
        negative: bool = False,
        timeout_s: float = 120.0,
    ) -> InteractiveCall:
        """A smart keypoint at percent coordinates of the frame (Alt held for a negative); returns the round trip.

        The label is re-selected first: the UI deselects it after every click (docs/ls-browser.md §2).
        """
        self.select_label(label, group)
        box = self.image_box()
        before = len(self.calls)
        try:
            with self.page.expect_response(
                lambda r: "/interactive-annotating" in r.url and r.request.method == "POST",
                timeout=timeout_s * 1000,
            ):
                if negative:
                    self.page.keyboard.down("Alt")
                try:
                    self.page.mouse.click(box.x + box.width * x_pct / 100, box.y + box.height * y_pct / 100)
                finally:
                    if negative:
                        self.page.keyboard.up("Alt")
        except PlaywrightTimeout:
            raise AssertionError(
                f"no /interactive-annotating reply {timeout_s:.0f} s after a smart click at ({x_pct:.1f}%, "
                f"{y_pct:.1f}%): a click on a visible region selects it, one outside the view does nothing"
            ) from None
        deadline = time.monotonic() + 10  # the response listener may run after expect_response returns
        while len(self.calls) == before and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        if len(self.calls) == before:
            raise AssertionError("the interactive-annotating reply was not recorded")
        call = self.calls[-1]
        if call.status != 200:
            raise AssertionError(f"interactive-annotating answered {call.status}: {call.response}")
        self.settle(1.0)
        return call

    def set_regions_hidden(self, hidden: bool) -> None:
        """Hide or show every region with the Regions panel's eye.

        A click on a visible region selects it instead of placing a smart point (no request is sent), so an
        annotator hides the pre-annotated masks to click inside them; the masks are still saved.
        """
        want = "Hide all regions" if hidden else "Show all regions"
        button = self.page.locator(f'button[aria-label="{want}"]')
        if button.count():
            button.first.click()
            other = "Show all regions" if hidden else "Hide all regions"
            self.page.wait_for_selector(f'button[aria-label="{other}"]')
        self.settle(0.3)

    def suggestion_count(self) -> int:
        """The bottom bar's "N suggestions" (0 when none is pending)."""
        bar = self.page.locator(".lsf-bottombar, [class*='bottombar']").first.inner_text()
        m = re.search(r"(\d+)\s+suggestions?", bar)
        return int(m.group(1)) if m else 0

    def accept_suggestions(self) -> None:
        self.page.click(ACCEPT)
        self.page.wait_for_selector(ACCEPT, state="detached")
        self.settle(0.5)

    def reject_suggestions(self) -> None:
        self.page.click(REJECT)
        self.page.wait_for_selector(REJECT, state="detached")
        self.settle(0.5)

    def submit(self) -> dict[str, Any]:
        """Submit the annotation; returns the saved annotation as the server answered it."""
        with self.page.expect_response(
            lambda r: (
                re.search(r"/api/tasks/\d+/annotations", r.url) is not None and r.request.method == "POST"
            )
        ) as info:
            self.page.click(SUBMIT)
        response = info.value
        if response.status not in (200, 201):
            raise AssertionError(f"submit answered {response.status}: {response.text()[:500]}")
        self.settle(0.5)
        return response.json()

    # -- <Video> -----------------------------------------------------------------------------------------------
    def video_seek(self, frame: int) -> None:
        """Jump the player to a 1-based frame: the frame counter turns into an input (Step moves 10 frames)."""
        self.page.locator(".lsf-frames-control").first.click()
        field_ = self.page.locator(".lsf-frames-control input").first
        field_.fill(str(frame))
        field_.press("Enter")
        self.page.wait_for_function(
            "(want) => { const e = document.querySelector('.lsf-frames-control');"
            " const m = e && e.innerText.match(/(\\d+)\\s*of/); return m && m[1] === want; }",
            arg=str(frame),
        )
        self.settle(0.7)

    def video_frame_box(self) -> Box2D:
        """Where the video frame is drawn: the Konva layer's offset and scale over the stage, times the frame size."""
        geometry = self.page.evaluate(
            """() => {
              const v = document.querySelector('video');
              const holder = document.querySelector('.lsf-video__main .konvajs-content');
              const stage = window.Konva && window.Konva.stages.find(s => s.container().contains(holder));
              if (!v || !stage) return null;
              const layer = stage.getLayers()[0], r = stage.container().getBoundingClientRect();
              return [r.x + layer.x(), r.y + layer.y(), v.videoWidth * layer.scaleX(), v.videoHeight * layer.scaleY()];
            }"""
        )
        if not geometry:
            raise AssertionError("no video frame on screen")
        return Box2D(*geometry)

    def video_boxes(self) -> list[dict[str, Any]]:
        """The box shapes Konva draws over the video now: stroke colour and screen rectangle (stroke included)."""
        return self.page.evaluate(
            """() => {
              const holder = document.querySelector('.lsf-video__main .konvajs-content');
              const stage = window.Konva && window.Konva.stages.find(s => s.container().contains(holder));
              if (!stage) return [];
              const r = stage.container().getBoundingClientRect();
              return stage.find('Rect').filter(n => n.isVisible() && n.stroke()).map(n => {
                const b = n.getClientRect();
                return {stroke: n.stroke(), x: r.x + b.x, y: r.y + b.y, width: b.width, height: b.height,
                        strokeWidth: n.strokeWidth()};
              });
            }"""
        )

    def video_position(self) -> tuple[int, int]:
        text = self.page.locator(".lsf-frames-control").first.inner_text()
        m = re.search(r"(\d+)\s*of\s*(\d+)", text)
        if not m:
            raise AssertionError(f"unreadable frame counter {text!r}")
        return int(m.group(1)), int(m.group(2))

    # -- what the model thought -------------------------------------------------------------------------
    def region_rows(self) -> list[str]:
        """The Regions panel's rows as one line each ("<index> <label> <score>" when the region has a score)."""
        return [" ".join(t.split()) for t in self.page.locator(REGION_ROW).all_inner_texts()]

    def select_region(self, index: int) -> None:
        """Select a region by its row in the Regions panel (its details then show in the Info panel)."""
        self.page.locator(REGION_ROW).nth(index).click()
        self.settle(0.5)

    def view_text(self) -> str:
        """Every text the page shows now, one line per block (what an annotator can read)."""
        return self.page.locator("body").inner_text()

    def text_top(self, text: str) -> float:
        """The screen y of the first element showing exactly `text`."""
        box = self.page.get_by_text(text, exact=True).first.bounding_box()
        if box is None:
            raise AssertionError(f"{text!r} is not on screen")
        return float(box["y"])

    def image_top(self) -> float:
        return self.image_box().y

    def annotation_tabs(self) -> list[str]:
        """The texts of the annotation/prediction tabs (a prediction tab names its model version and score)."""
        return [" ".join(t.split()) for t in self.page.locator(".lsf-annotation-button").all_inner_texts()]

    # -- evidence ----------------------------------------------------------------------------------------------
    def shot(self, name: str) -> Path:
        """A numbered full-page screenshot in the session's folder."""
        self._step += 1
        path = self.shots / f"{self._step:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        return path


# -- reading screenshots -------------------------------------------------------------------------------------------
def hex_colour(value: str) -> np.ndarray:
    """'#00ff00' or 'rgb(0,255,0)' -> float RGB."""
    value = value.strip()
    if value.startswith("#"):
        return np.array([int(value[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return np.array([float(v) for v in re.findall(r"[\d.]+", value)[:3]])


def tint(shot: np.ndarray, frame: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far each drawn pixel moved from the frame's own colour toward `colour` (0 = untouched, 1 = painted).

    A region drawn with opacity a over the frame gives ~a; the frame's own pixels give ~0. Returns (tint, valid):
    pixels whose colour is already close to `colour` cannot tell and are not valid.
    """
    f = frame.astype(float)
    d = colour[None, :] - f
    norm = (d * d).sum(-1)
    valid = norm > 60.0**2
    t = ((shot.astype(float) - f) * d).sum(-1) / np.maximum(norm, 1.0)
    return t, valid


@dataclass
class MaskAgreement:
    """Share of painted screen pixels inside and outside a mask (edges left out), with the sample sizes."""

    inside: float
    outside: float
    n_inside: int
    n_outside: int

    def matches(self, min_inside: float = 0.9, max_outside: float = 0.1, min_samples: int = 20) -> bool:
        ok_in = self.n_inside < min_samples or self.inside >= min_inside
        ok_out = self.n_outside < min_samples or self.outside <= max_outside
        return ok_in and ok_out and self.n_inside + self.n_outside >= min_samples


def mask_agreement(
    pixels: np.ndarray,
    to_shot: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    unobstructed: np.ndarray,
    frame: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    threshold: float = 0.25,
) -> MaskAgreement:
    """Compare what the screen shows over a frame with a mask decoded from the API.

    Frame pixels one pixel or more from the mask's edge are sampled at their centres on screen (the rest is
    anti-aliased), where nothing covers the image; a sample is painted when its tint toward the label colour
    exceeds `threshold`.
    """
    from scipy.ndimage import binary_erosion

    mask = mask.astype(bool)
    result = []
    for region in (binary_erosion(mask, border_value=1), binary_erosion(~mask, border_value=1)):
        v, u = np.nonzero(region)
        rows, cols = to_shot(u, v)
        seen = (rows >= 0) & (rows < pixels.shape[0]) & (cols >= 0) & (cols < pixels.shape[1])
        v, u, rows, cols = v[seen], u[seen], rows[seen], cols[seen]
        clear = unobstructed[rows, cols]
        v, u, rows, cols = v[clear], u[clear], rows[clear], cols[clear]
        t, valid = tint(pixels[rows, cols], frame[v, u], colour)
        painted = t[valid] > threshold
        result.append((float(painted.mean()) if painted.size else 0.0, int(painted.size)))
    (inside, n_in), (outside, n_out) = result
    return MaskAgreement(inside, outside, n_in, n_out)


def stroke_coverage(
    pixels: np.ndarray, origin: Box2D, box: Box2D, colour: np.ndarray, reach: int = 2
) -> float:
    """Share of points along a rectangle's four edges with a pixel of the stroke colour within `reach` pixels.

    `pixels` is a screenshot whose top-left corner is at `origin` (CSS pixels, device scale 1).
    """
    close = np.abs(pixels.astype(float) - colour[None, None, :]).max(-1) <= 60
    hits = []
    xs = np.linspace(box.x, box.x + box.width, 40)
    ys = np.linspace(box.y, box.y + box.height, 40)
    edges = [(xs, np.full_like(xs, box.y)), (xs, np.full_like(xs, box.y + box.height))]
    edges += [(np.full_like(ys, box.x), ys), (np.full_like(ys, box.x + box.width), ys)]
    for ex, ey in edges:
        for x, y in zip(ex, ey):
            c, r = int(round(x - origin.x)), int(round(y - origin.y))
            r0, r1 = max(0, r - reach), min(close.shape[0], r + reach + 1)
            c0, c1 = max(0, c - reach), min(close.shape[1], c + reach + 1)
            hits.append(bool(close[r0:r1, c0:c1].any()) if r0 < r1 and c0 < c1 else False)
    return float(np.mean(hits))


def screenshot_region(page: Any, box: Box2D, margin: float = 6.0) -> tuple[np.ndarray, Box2D]:
    """A screenshot of `box` grown by `margin` (clipped to the viewport), with its top-left corner."""
    from PIL import Image

    x0, y0 = max(0.0, box.x - margin), max(0.0, box.y - margin)
    x1 = min(float(VIEWPORT["width"]), box.x + box.width + margin)
    y1 = min(float(VIEWPORT["height"]), box.y + box.height + margin)
    shot = page.screenshot(clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")), Box2D(x0, y0, x1 - x0, y1 - y0)


@contextmanager
def signed_in_session(chromium: str | None, ls: Any, screenshots: str) -> Iterator[LabelingSession]:
    """A fresh browser signed in to Label Studio `ls` as its admin; screenshots go to screenshot_dir(screenshots)."""
    with chromium_context(chromium) as context:
        ui = LabelingSession(context.pages[0], ls.url, screenshot_dir(screenshots))
        ui.login(ls.username, ls.password)
        yield ui
