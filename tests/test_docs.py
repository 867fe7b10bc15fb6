"""The documentation builds, and the parameter tables match cookiecutter.json."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import QUESTIONS, TEMPLATE_DIR


def test_parameter_tables_are_generated_from_cookiecutter_json() -> None:
    result = subprocess.run(
        [sys.executable, str(TEMPLATE_DIR / "scripts" / "gen_parameters.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(QUESTIONS)


def test_readme_gives_exactly_two_setup_commands() -> None:
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands on a fresh machine", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (TEMPLATE_DIR / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in ci


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "parameters" / "index.html").is_file()


# The site as a reader sees it: each page in headless Chromium (Debian's; scripts/test.sh installs it).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
PLACEHOLDER = re.compile(r"<[a-z][a-z_ -]*>")


def _chromium() -> str:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the docs tests need headless Chromium: apt-get install chromium (scripts/test.sh does)"
    return found


def _browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _visible_text(html: str) -> str:
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("script", "style")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(html)
    return "".join(parser.parts)  # highlighted code is split into spans mid-word


def test_every_page_renders_in_a_browser_with_no_text_lost(tmp_path: Path) -> None:
    from collections import Counter

    from PIL import Image, ImageStat

    chromium = _chromium()
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr
    sources = sorted((TEMPLATE_DIR / "docs").glob("*.md"))
    assert sources
    for source in sources:
        page = site / ("index.html" if source.stem == "index" else f"{source.stem}/index.html")
        markdown = re.sub(r"<!--.*?-->", "", source.read_text(encoding="utf-8"), flags=re.DOTALL)
        # What the author wrote between angle brackets is text (ml.<family>.<size>), not a tag to swallow.
        expected = Counter(PLACEHOLDER.findall(markdown.replace("&lt;", "<").replace("&gt;", ">")))
        dom = _browse(chromium, page, tmp_path / "profile", "--dump-dom")
        assert dom.returncode == 0 and "<body" in dom.stdout, dom.stderr[-2000:]
        text = _visible_text(dom.stdout)
        shown = Counter(PLACEHOLDER.findall(text))
        missing = sorted(word for word, count in expected.items() if shown[word] < count)
        assert missing == [], f"{source.name}: {missing} lost to HTML escaping"
        picture = tmp_path / f"{source.stem}.png"
        size = "--window-size=1280,1600"
        shot = _browse(chromium, page, tmp_path / "profile", f"--screenshot={picture}", size)
        assert shot.returncode == 0 and picture.is_file(), shot.stderr[-2000:]
        with Image.open(picture) as image:
            assert image.size == (1280, 1600)
            # A page, not a blank: text and the theme's header give the picture contrast.
            assert max(high - low for low, high in ImageStat.Stat(image.convert("L")).extrema) > 100
