"""The console's files without a server: the vendored libraries (test-only axe-core, and three.js
served to the page) match their manifests (versions and sha256 from `npm pack`), and the page
keeps the rules its CSP and the key handling rely on. The browser tests are
tests/apiserver/test_console.py and test_console_viewer.py."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from spatialforge.apiserver import console

VENDOR = Path(__file__).resolve().parents[2] / "apiserver" / "vendor"
STATIC = console.STATIC
SERVED = STATIC / "vendor"  # libraries the page itself loads (three.js for the 3D viewer)


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


def test_served_libraries_match_their_manifest() -> None:
    """Each served file's sha256; a file with a `rewrite` is the packed file with that one
    replacement (its bare `three` specifier made relative), checked by undoing it."""
    manifest = json.loads((SERVED / "manifest.json").read_text())
    listed: set[str] = set()
    for name, package in manifest["packages"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), (name, package["version"])
        assert f"{name}-{package['version']}/LICENSE" in package["files"], f"{name}: no LICENSE vendored"
        for path, entry in package["files"].items():
            assert path.startswith(f"{name}-{package['version']}/"), path
            data = (SERVED / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{path} changed"
            if "rewrite" in entry:
                packed, served = (t.encode() for t in entry["rewrite"])
                assert packed not in data and data.count(served) == 1, path
                assert hashlib.sha256(data.replace(served, packed)).hexdigest() == entry["upstream"], path
            if path.endswith(".js"):
                for ref in re.findall(rb"""(?:from|import)\s*['"]([^'"]+)['"]""", data):
                    assert ref.startswith(b"./") and (SERVED / path).parent.joinpath(ref.decode()).is_file(), (path, ref)
            listed.add(path)
    on_disk = {str(p.relative_to(SERVED)) for p in SERVED.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == listed, f"vendored but not in the manifest: {sorted(on_disk - listed)}"
    viewer = (STATIC / "viewer.js").read_text()
    folder = re.search(r'THREE_DIR = "\./([^"]+)"', viewer).group(1)
    for module in re.findall(r"\$\{THREE_DIR\}([\w.]+)", viewer):
        assert (STATIC / folder / module).is_file(), f"viewer.js imports {folder}{module}, which is not vendored"


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
        assert not re.search(r"[?&](api_?key|key)=", script.read_text(), re.IGNORECASE), f"{script.name} puts a key in a URL"


def test_the_csp_is_strict() -> None:
    directives = dict(d.strip().split(" ", 1) for d in console.CSP.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
    assert "unsafe" not in console.CSP and "*" not in console.CSP


def test_the_csp_names_the_object_store_origin_only() -> None:
    origin = console.object_store_origin("https://objects.example.com:9000/some/path?x=1")
    assert origin == "https://objects.example.com:9000"
    directives = dict(d.strip().split(" ", 1) for d in console.csp(origin).split(";"))
    assert directives["connect-src"] == "'self' https://objects.example.com:9000"
    assert directives["img-src"] == "'self' blob: data: https://objects.example.com:9000"
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
    assert console.object_store_origin(None) is None and console.csp(None) == console.CSP
    for bad in ("objects.example.com", "ftp://objects.example.com", "https://"):
        with pytest.raises(ValueError, match="not an http"):
            console.object_store_origin(bad)
