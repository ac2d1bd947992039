"""The report's HTML checks: a strict html.parser check, and the headless-Chromium helpers.

The tests that run them on written reports are in tests/test_report.py (they share its store).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

# ----------------------------------------------------------------------------- HTML checks
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Every element closed in order, unique ids, alt text, real tables, the document's head."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.files: list[str] = []
        self.doctype = ""
        self.seen: dict[str, list[dict]] = {}
        self.title = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower()

    def handle_starttag(self, tag: str, attrs) -> None:
        a = dict(attrs)
        self.seen.setdefault(tag, []).append(a)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.hrefs.append(a["href"][1:])
        elif a.get("href") or a.get("src"):
            self.files.append(a.get("href") or a.get("src"))
        if tag == "img":
            assert a.get("alt") and a.get("src"), f"img without alt or src: {a}"
        if tag in ("thead", "tbody", "caption"):
            assert self.stack[-1] == "table", f"<{tag}> outside a table (in {self.stack[-1]})"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs) -> None:
        assert tag in VOID, f"<{tag}/> is not a void element"
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"</{tag}> closes a void element"
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title":
            self.title += data


def check_html(page: str, folder=None) -> StrictHTML:
    """Parse ``page`` strictly (html.parser plus the checks of :class:`StrictHTML`); raise on a fault.

    With ``folder`` (the page's folder), every linked file must exist there.
    """
    p = StrictHTML()
    p.feed(page)
    p.close()
    if folder is not None:
        missing = [f for f in p.files if not (folder / f).is_file()]
        assert not missing, f"links to missing files: {missing}"
    assert p.doctype == "doctype html" and not p.stack, f"unclosed: {p.stack}"
    assert len(p.ids) == len(set(p.ids)), f"duplicate ids: {sorted(i for i in p.ids if p.ids.count(i) > 1)}"
    assert set(p.hrefs) <= set(p.ids), f"links to missing anchors: {set(p.hrefs) - set(p.ids)}"
    assert p.seen["html"][0].get("lang") == "en" and p.title.strip()
    assert any(m.get("charset", "").lower() == "utf-8" for m in p.seen["meta"])
    assert any(m.get("name") == "viewport" for m in p.seen["meta"])
    n = len(p.seen.get("table", []))
    assert n and len(p.seen["thead"]) == len(p.seen["tbody"]) == len(p.seen["caption"]) == n
    return p


def test_the_html_check_catches_faults():
    good = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="x">'
            "<title>t</title></head><body><table><caption>c</caption><thead></thead><tbody></tbody></table>"
            "</body></html>")
    check_html(good)
    for bad in (good.replace("</caption>", ""), good.replace("<body>", '<body><img src="a.png">'),
                good.replace("<body>", '<body><p id="x"></p><p id="x"></p>'), good.replace("<!doctype html>", ""),
                good.replace("<body>", '<body><a href="#nowhere">x</a>')):
        with pytest.raises(AssertionError):
            check_html(bad)


# ----------------------------------------------------------------------------- headless Chromium (helpers)
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>
window.addEventListener("load", () => {
  const b = document.body, root = document.documentElement;
  b.dataset.broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => i.getAttribute("src")).join(",");
  b.dataset.overflow = String(root.scrollWidth - root.clientWidth);
  b.dataset.shown = [...document.querySelectorAll("#results-table, #plumbing-table, #versions-table")]
    .filter(t => t.getBoundingClientRect().height > 0).map(t => t.id).join(",");
  b.dataset.probed = "yes";
});
</script>"""


def _chromium() -> str | None:
    return next((shutil.which(c) for c in CHROMIUM if shutil.which(c)), None)


def _install_chromium() -> str | None:
    """Debian's chromium through apt-get on CI (CI=true, root); ``None`` when installed, else why not."""
    if _chromium():
        return None
    if os.environ.get("CI") != "true":
        return "chromium is not installed (Debian: apt-get install chromium); the html.parser check still runs"
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium is not installed and CI cannot install it (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    said = ""
    for cmd in (install, ["apt-get", "update", "-qq"], install):
        if _chromium():
            return None
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        said = done.stderr.strip()[-300:] or said
    return None if _chromium() else f"apt-get install chromium left no chromium: {said}"


def test_without_chromium_the_browser_test_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    assert "chromium is not installed (Debian: apt-get install chromium)" in _install_chromium()
