#!/usr/bin/env python3
"""Vendor the console's third-party browser assets (htmx, uPlot) into the package.

The console needs no Node build step at install time: the few files it uses
from npm packages are committed under ``src/clawtrace/console/static/vendor/``.
This script is how they get there, and how they are updated:

    python3 scripts/vendor_assets.py            # download, verify, extract, write VERSIONS.json + LICENSES.md
    python3 scripts/vendor_assets.py --check    # offline: the committed files are the pinned ones

Each package is pinned to a version and to the sha512 of its tarball (``PINS``).
A download is used only if the tarball's sha512 equals both the pin and the
``dist.integrity`` the registry reports for that version, so a changed
registry, a tampered mirror or a typo in a pin stops the script instead of
shipping unknown code. To move to a new version: change its ``version``, set
``integrity`` to what ``npm view PACKAGE@VERSION dist.integrity`` prints (or
run once with the old value: the error message shows the registry's), run the
script, read the diff of the vendored files, and commit.

Only the standard library is used, so it runs with any ``python3`` >= 3.11.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY = "https://registry.npmjs.org"
ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = ROOT / "src" / "clawtrace" / "console" / "static" / "vendor"
VERSIONS_FILE = "VERSIONS.json"
LICENSES_FILE = "LICENSES.md"
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    # The tarball's Subresource-Integrity string, as the registry's dist.integrity gives it.
    integrity: str
    # Path inside the tarball (below "package/") -> file name under vendor/.
    files: dict[str, str]
    license_file: str
    homepage: str


PINS: tuple[Pin, ...] = (
    Pin(
        package="htmx.org",
        # 2.x, not 4.x: 2 is the line whose attributes and events the console is written
        # against (hx-trigger "every", htmx:beforeSwap, htmx:afterSwap).
        version="2.0.11",
        integrity="sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==",
        files={"dist/htmx.min.js": "htmx.min.js"},
        license_file="LICENSE",
        homepage="https://htmx.org",
    ),
    Pin(
        package="uplot",
        version="1.6.32",
        integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        files={"dist/uPlot.iife.min.js": "uPlot.iife.min.js", "dist/uPlot.min.css": "uPlot.min.css"},
        license_file="LICENSE",
        homepage="https://github.com/leeoniya/uPlot",
    ),
)


class VendorError(Exception):
    """Something does not match; the message says what and what to do."""


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            data: bytes = response.read()
            return data
    except OSError as exc:
        raise VendorError(f"cannot download {url}: {exc}") from None


def registry_dist(pin: Pin) -> dict[str, Any]:
    """The registry's ``dist`` block (tarball URL, integrity) for the pinned version."""
    url = f"{REGISTRY}/{pin.package}/{pin.version}"
    try:
        document = json.loads(fetch(url))
    except json.JSONDecodeError as exc:
        raise VendorError(f"{url} did not answer JSON: {exc}") from None
    dist = document.get("dist")
    if not isinstance(dist, dict) or "tarball" not in dist or "integrity" not in dist:
        raise VendorError(
            f"{url} has no dist.tarball / dist.integrity; is {pin.version} a published version?"
        )
    return dist


def verified_tarball(pin: Pin) -> bytes:
    dist = registry_dist(pin)
    if dist["integrity"] != pin.integrity:
        raise VendorError(
            f"{pin.package}@{pin.version}: the registry reports integrity {dist['integrity']}, "
            f"the pin in {Path(__file__).name} says {pin.integrity}. If you are moving to a new "
            "version, put the registry's value in the pin; otherwise do not vendor this tarball."
        )
    data = fetch(str(dist["tarball"]))
    actual = sri_sha512(data)
    if actual != pin.integrity:
        raise VendorError(
            f"{pin.package}@{pin.version}: the downloaded tarball hashes to {actual}, "
            f"not the pinned and published {pin.integrity}; nothing was written"
        )
    return data


def extract(pin: Pin, tarball: bytes) -> tuple[dict[str, bytes], str]:
    """(vendored file name -> content, license text), reading only the named members."""
    wanted = {f"package/{inner}": name for inner, name in pin.files.items()}
    license_member = f"package/{pin.license_file}"
    files: dict[str, bytes] = {}
    license_text: str | None = None
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or (member.name not in wanted and member.name != license_member):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            content = handle.read()
            if member.name == license_member:
                license_text = content.decode("utf-8")
            else:
                files[wanted[member.name]] = content
    missing = sorted(set(wanted.values()) - files.keys())
    if missing or license_text is None:
        absent = missing + ([pin.license_file] if license_text is None else [])
        raise VendorError(
            f"{pin.package}@{pin.version}: the tarball lacks {', '.join(absent)}; fix the pin's file list"
        )
    return files, license_text


def licenses_note(entries: list[tuple[Pin, str]]) -> str:
    parts = [
        "# Licenses of the vendored browser assets\n",
        f"Written by `scripts/vendor_assets.py`; the versions and checksums are in `{VERSIONS_FILE}`.\n",
    ]
    for pin, text in entries:
        parts.append(f"\n## {pin.package} {pin.version} ({pin.homepage})\n\n```text\n{text.strip()}\n```\n")
    return "".join(parts)


def vendor(vendor_dir: Path) -> dict[str, Any]:
    """Download, verify and write every pinned package; returns the VERSIONS document."""
    versions: dict[str, Any] = {"registry": REGISTRY, "packages": {}}
    licenses: list[tuple[Pin, str]] = []
    outputs: dict[str, bytes] = {}
    for pin in PINS:
        print(f"{pin.package}@{pin.version}: downloading and verifying", file=sys.stderr)
        files, license_text = extract(pin, verified_tarball(pin))
        outputs.update(files)
        licenses.append((pin, license_text))
        versions["packages"][pin.package] = {
            "version": pin.version,
            "integrity": pin.integrity,
            "license_file": pin.license_file,
            "files": {name: {"sha256": sha256_hex(content)} for name, content in sorted(files.items())},
        }
    # Everything verified before anything is written: a failure leaves the old files whole.
    vendor_dir.mkdir(parents=True, exist_ok=True)
    for name, content in outputs.items():
        (vendor_dir / name).write_bytes(content)
    (vendor_dir / VERSIONS_FILE).write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
    (vendor_dir / LICENSES_FILE).write_text(licenses_note(licenses), encoding="utf-8")
    return versions


def check(vendor_dir: Path) -> list[str]:
    """Offline: problems with the committed files (empty when they are exactly the pinned ones)."""
    problems: list[str] = []
    versions_path = vendor_dir / VERSIONS_FILE
    try:
        versions = json.loads(versions_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{versions_path}: {exc}; run scripts/vendor_assets.py"]
    recorded = versions.get("packages", {})
    for pin in PINS:
        entry = recorded.get(pin.package)
        if entry is None or entry.get("version") != pin.version or entry.get("integrity") != pin.integrity:
            problems.append(f"{pin.package}: {VERSIONS_FILE} does not record the pinned {pin.version}")
            continue
        for name in pin.files.values():
            path = vendor_dir / name
            expected = entry.get("files", {}).get(name, {}).get("sha256")
            if not path.is_file():
                problems.append(f"{path} is missing")
            elif sha256_hex(path.read_bytes()) != expected:
                problems.append(f"{path} differs from the vendored {pin.package}@{pin.version}")
    if not (vendor_dir / LICENSES_FILE).is_file():
        problems.append(f"{vendor_dir / LICENSES_FILE} is missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="verify the committed files offline; exit 1 if not"
    )
    parser.add_argument("--dir", type=Path, default=VENDOR_DIR, help=f"where the files go [{VENDOR_DIR}]")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{args.dir}: every vendored file matches its pin", file=sys.stderr)
        return 1 if problems else 0
    try:
        versions = vendor(args.dir)
    except VendorError as exc:
        print(f"vendor_assets: {exc}", file=sys.stderr)
        return 1
    for package, entry in versions["packages"].items():
        print(f"{package}@{entry['version']}: {', '.join(entry['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
