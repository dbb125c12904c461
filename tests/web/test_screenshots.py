"""The README's screenshots of the web view: real PNGs of the page, light and dark.

They are taken by ``tests/integration/test_web_live.py`` during a busy build
(``ICESERV_UPDATE_SCREENSHOTS=1`` copies them into ``docs/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from web.webbed import WINDOW, check_png, png_size

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ("web-view-light.png", "web-view-dark.png")


class TestScreenshots:
    @pytest.mark.parametrize("name", SHOTS)
    def test_screenshot_is_a_full_page_picture(self, name: str) -> None:
        """Each is a PNG of the browser's viewport size with a real picture in it."""
        check_png(ROOT / "docs" / name)

    def test_readme_shows_both(self) -> None:
        """The README embeds both pictures."""
        text = (ROOT / "README.md").read_text()
        for name in SHOTS:
            assert f"(docs/{name})" in text

    def test_dark_is_darker_than_light(self) -> None:
        """Both have the viewport size and are different pictures."""
        light, dark = ((ROOT / "docs" / name).read_bytes() for name in SHOTS)
        assert png_size(light) == png_size(dark) == WINDOW
        assert light != dark
