"""The console's files without a server: the vendored libraries match their manifest (versions
and sha256 from `npm pack`), and the page keeps the rules its CSP and the key handling rely on.
The browser test is tests/apiserver/test_console.py."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from spatialforge.apiserver import console

VENDOR = Path(__file__).resolve().parents[2] / "apiserver" / "vendor"
STATIC = console.STATIC


def test_vendored_files_match_the_manifest() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    listed: set[str] = set()
    for name, package in manifest["packages"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), (name, package["version"])
        assert f"{name}-{package['version']}/LICENSE" in package["files"], f"{name}: no LICENSE vendored"
        for path, digest in package["files"].items():
            assert path.startswith(f"{name}-{package['version']}/"), path
            assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == digest, f"{path} changed"
            listed.add(path)
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == listed, f"vendored but not in the manifest: {sorted(on_disk - listed)}"


def test_the_page_loads_only_its_own_files_and_no_inline_code() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="app.js">']
    assert " style=" not in page and "<style" not in page and not re.search(r"\son[a-z]+=", page)
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
        assert (STATIC / ref).is_file(), f"index.html refers to {ref}, which is not served"
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for ref in re.findall(r'from "\./([^"]+)"', text):
            assert (STATIC / ref).is_file(), f"{script.name} imports {ref}, which is not served"
        assert not re.search(r"https?://", text), f"{script.name} names another origin"
        assert "innerHTML" not in text and "eval(" not in text and "new Function" not in text, script.name
        assert "console.log" not in text and "localStorage" not in text, f"{script.name} may log or persist the key"


def test_the_key_travels_only_in_a_header() -> None:
    api = (STATIC / "api.js").read_text()
    assert 'headers["X-API-Key"] = apiKey' in api and "sessionStorage" in api
    for script in STATIC.glob("*.js"):
        assert not re.search(r"[?&](api_?key|key)=", script.read_text(), re.I), f"{script.name} puts a key in a URL"


def test_the_csp_is_strict() -> None:
    directives = dict(d.strip().split(" ", 1) for d in console.CSP.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
    assert "unsafe" not in console.CSP and "*" not in console.CSP
