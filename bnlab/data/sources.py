"""Where the dataset files are, in source order, and loading them verified: `bnlab data where`,
`fetch` and `verify`, and load_raw for training. A file is checked by the SHA-256 of its
decompressed bytes (so a repacked .gz still verifies) before the cache accepts it, and before
training uses it whenever `data.verify` is on.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from bnlab.config import DataConfig
from bnlab.data._download import NPM_PACKAGE, fill_cache, mirror_urls, npm_unavailable
from bnlab.data._idx import FILES, SHA256, RawDataset, check_hash, find_file, missing_files, parse_idx, read_bytes
from bnlab.errors import DataError

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SYSTEM = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's dataset-fashion-mnist


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


# --- where the files are -----------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in SHA256:
        raise DataError(f"dataset {dataset!r}: unknown; allowed: {', '.join(SHA256)}")






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
        if not missing_files(folder):
            return folder, source
    if explicit:
        missing = min((missing_files(folder) for folder, _ in copies), key=len)
        raise DataError(
            f"{copies[0][1]}: no complete {dataset} copy here or in {copies[1][0]} "
            f"(missing {', '.join(missing)}, raw or .gz)"
        )
    cache = cache_folder(dataset)
    return cache, fill_cache(dataset, cache)


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
                    check_hash(cfg.dataset, check.name, check.sha256, check.path, source)
        raise
    if cfg.verify:
        for name, path in zip(FILES, paths, strict=True):
            check_hash(cfg.dataset, name, raw.sha256[name], path, source)
    return raw


@functools.lru_cache(maxsize=4)  # a worker that runs many configs parses the files once
def _load_files(dataset: str, paths: tuple[Path, ...], stats: tuple, source: str) -> RawDataset:
    arrays, hashes = {}, {}
    for name, path in zip(FILES, paths, strict=True):
        data = read_bytes(path)
        hashes[name] = hashlib.sha256(data).hexdigest()
        arrays[name] = parse_idx(data, path)
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
        if not missing_files(folder):
            for check in _file_checks(dataset, folder):
                if check.error:
                    raise DataError(check.error)
                check_hash(dataset, check.name, check.sha256, check.path, source)
            return folder, source
    return _locate(dataset, root, "root")


def verify(dataset: str, root: str | None = None) -> list[FileCheck]:
    """Hash the files of the copy load_raw would use (else the first partial one) against SHA256."""
    _check_dataset(dataset)
    copies, explicit = _candidates(dataset, root, "root")
    folders = [folder for folder, _ in copies if not missing_files(folder)]
    folders += [folder for folder, _ in copies if len(missing_files(folder)) < len(FILES)]
    if not folders:
        if explicit:
            raise DataError(f"{copies[0][1]}: no {dataset} files here or in {copies[1][0]}")
        looked = " or ".join(source for _, source in copies)
        raise DataError(f"{dataset}: no files in {looked}; `bnlab data fetch` downloads them")
    return _file_checks(dataset, folders[0])


def _file_checks(dataset: str, folder: Path) -> list[FileCheck]:
    checks = []
    for name in FILES:
        path = find_file(folder, name)
        if path is not None:
            try:
                got, error = hashlib.sha256(read_bytes(path)).hexdigest(), ""
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
        found = len(FILES) - len(missing_files(folder))
        checks.append(SourceCheck(source.split(" ", 1)[0], str(folder), found, found == len(FILES)))
    note = f"not tried: {copies[0][1].split(' ', 1)[0]} is set" if explicit else ""
    try:
        mirrors = mirror_urls(dataset)
    except DataError as err:
        mirrors, note = [], str(err)
    checks += [SourceCheck("download", url, 0, False, note) for url in mirrors]
    if dataset == "mnist":
        checks.append(SourceCheck("npm", NPM_PACKAGE, 0, False, note or npm_unavailable() or "npm on PATH"))
    return checks
