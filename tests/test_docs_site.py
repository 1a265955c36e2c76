"""The documentation site (mkdocs.yml, docs/, issue 13) builds in strict mode, documents every
public name, and renders in a real browser.

Needs the ``docs`` extra (``pip install -e ".[docs]"``) and, for the screenshots, Debian's
chromium (``bash scripts/setup_docs.sh`` installs both); each test says so and skips without.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

# module -> its API page in the built site; each page documents that module's ``__all__``.
API_PAGES = {
    "problayers": "api/problayers.html",
    "problayers.layers": "api/layers.html",
    "problayers.train": "api/train.html",
    "problayers.vae": "api/vae.html",
}
# The pages of docs/ besides the API reference (the index page is README.md).
PAGES = ["index", "design", "porting", "export", "reliability", "benchmarks", "quality", "distributed"]


class _Anchors(HTMLParser):
    """The ``id``s and link targets of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def _anchors(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    """The site, built as the README says (``mkdocs build --strict``) into a temporary folder."""
    missing = [m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python") if not _installed(m)]
    if missing:
        pytest.skip(f"mkdocs is not installed ({', '.join(missing)} missing): pip install -e '.[docs]'")
    with tempfile.TemporaryDirectory(prefix="problayers-site-") as tmp:
        out = Path(tmp) / "site"
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
        yield out


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_every_page_is_built(site):
    for page in [*PAGES, *(p.removesuffix(".html") for p in API_PAGES.values())]:
        assert (site / f"{page}.html").is_file(), f"{page}.html was not built"
    index = _anchors(site / "index.html")
    # README's links are relative to the repository root; on the site they must not be.
    stale = [h for h in index.hrefs if h.startswith("docs/")]
    assert not stale, f"README links not rewritten for the site (docs/hooks.py): {stale}"
    assert "design.html" in index.hrefs
    # The pictures README shows are on the site too.
    assert (site / "results" / "seed-gpu" / "prior_samples.png").is_file()


@pytest.mark.parametrize("module", sorted(API_PAGES))
def test_api_page_documents_every_public_name(site, module):
    """Each name of ``module.__all__`` has an entry on its API page, or (a re-export) a link from
    that page to the entry that documents it elsewhere on the site."""
    names = importlib.import_module(module).__all__
    page = _anchors(site / API_PAGES[module])
    site_ids: dict[str, set[str]] = {}

    def documented_elsewhere(name: str) -> bool:
        for href in page.hrefs:
            target, _, anchor = href.partition("#")
            if not anchor.endswith(f".{name}") or not target.endswith(".html"):
                continue
            path = (site / API_PAGES[module]).parent / target
            if path.is_file():
                ids = site_ids.setdefault(str(path), _anchors(path).ids)
                if anchor in ids:
                    return True
        return False

    missing = [n for n in names if f"{module}.{n}" not in page.ids and not documented_elsewhere(n)]
    assert not missing, (
        f"{API_PAGES[module]} does not document {', '.join(f'{module}.{n}' for n in missing)}: "
        "give them docstrings (mkdocstrings "
        f"leaves out names without one) or, for a re-export, a link from docs/{API_PAGES[module][:-5]}.md "
        "to where they are documented"
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (bash scripts/setup_docs.sh installs it)"
)
@pytest.mark.parametrize("page", ["index", "api/layers"])
def test_page_renders_in_a_browser(site, page, tmp_path):
    """Headless chromium draws the page: a screenshot that is not blank (text, navigation)."""
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (the vae extra has it)")
    png = tmp_path / "page.png"
    profile = tmp_path / "profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1280,900",
        (site / f"{page}.html").as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    with image.open(png) as shot:
        rgb = shot.convert("RGB")
        colours = rgb.getcolors(1 << 24)
        inked = sum(count for count, colour in colours if colour != (255, 255, 255))
        assert rgb.size == (1280, 900)
        # A blank page is one colour; a drawn one has anti-aliased text, the header bar, code.
        assert len(colours) > 100, f"{page}: the screenshot has {len(colours)} colours: is it blank?"
        assert inked / (rgb.width * rgb.height) > 0.05, f"{page}: the screenshot is almost all white"
