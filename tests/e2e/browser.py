"""A real browser for the call page: Debian's `chromium`, headless, driven by the Python `playwright` package.

Never a downloaded browser (`playwright install` cannot download here and must not be needed on CI): the
executable is /usr/bin/chromium from scripts/setup --dev. Its microphone is Chromium's fake capture device
playing a WAV made by the test (espeak-ng speech, 48 kHz mono, once: `%noloop`), and the permission prompt is
answered yes by `--use-fake-ui-for-media-stream`. Each browser gets a new, empty profile directory. The process
inherits the test network namespace (tests/e2e/network.py), so its WebRTC traffic stays there.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tests.doubles.wav_fixtures import write_wav

CHROMIUM = Path("/usr/bin/chromium")
BUNDLE = Path(__file__).resolve().parents[2] / "door" / "static" / "call-page.js"
SAMPLE_RATE = 48_000

# What this machine needs for a headless Chromium that makes no connection of its own.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return "chromium is not installed (Debian package chromium); run scripts/setup --dev"
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError:
        return "the playwright package is not installed; run scripts/setup --dev"
    if not BUNDLE.exists():
        return "the call page's script is not built (door/static/call-page.js); run scripts/setup (needs npm)"
    return None


def fake_microphone(path: Path, speech: np.ndarray, *, lead_s: float, tail_s: float) -> Path:
    """A WAV for Chromium's fake capture device: `lead_s` of silence (the agent greets meanwhile), the caller's
    speech, then `tail_s` of silence so the end of speech is heard and the call can go on quietly."""
    silence = np.zeros(int(SAMPLE_RATE * lead_s), dtype=np.int16)
    tail = np.zeros(int(SAMPLE_RATE * tail_s), dtype=np.int16)
    return write_wav(path, np.concatenate([silence, speech.astype(np.int16), tail]), SAMPLE_RATE)


def chromium_flags(microphone: Path | None) -> list[str]:
    flags = list(BASE_FLAGS)
    if microphone is not None:
        flags += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}%noloop",
        ]
    else:
        # permission granted, but no capture device at all: what a machine without a microphone shows a page
        flags += ["--use-fake-ui-for-media-stream"]
    return flags


@contextmanager
def chromium_page(workdir: Path, microphone: Path | None, *, width: int = 1280, height: int = 900) -> Iterator[object]:
    """A page of a fresh headless Chromium (a `playwright.sync_api.Page`; typed loosely so that importing this
    module does not need playwright). Console messages and page errors are kept in `page.vw_console`."""
    from playwright.sync_api import sync_playwright

    profile = workdir / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir(parents=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=chromium_flags(microphone),
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.vw_console = console  # type: ignore[attr-defined]  # the tests read it on failure
            yield page
        finally:
            context.close()


# --- reading the page (the ids and data attributes door/static/call-page.html documents) ---------------------


def peak(page: Any, meter: str) -> float:
    """The highest level a meter (`caller-level`, `agent-level`) has shown since the call started."""
    return float(page.get_attribute(f"#{meter}", "data-peak") or 0)


def transcript(page: Any, role: str) -> list[str]:
    """The transcript lines of `role` (`caller` or `agent`), as shown."""
    return [t.strip() for t in page.locator(f'#transcript li[data-role="{role}"] .text').all_inner_texts()]


def wait_until(page: Any, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` while the page runs; on timeout fail with what the page shows and said."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            console = "\n".join(getattr(page, "vw_console", [])[-20:])
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what}\n"
                f"state: {page.inner_text('#state')!r}; error: {page.inner_text('#error')!r}\n"
                f"transcript: {page.inner_text('#transcript')!r}\nconsole:\n{console}"
            )
        page.wait_for_timeout(200)
