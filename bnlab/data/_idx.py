"""The four IDX files of MNIST and Fashion-MNIST: their names and published SHA-256s, and the
parser (raw or .gz, bounded, every malformed byte a DataError naming the file)."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
MAX_BYTES = 64 << 20  # the largest real file (train images) is 47,040,016 bytes: refuse anything far bigger
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


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or .gz) as a read-only uint8 array; anything malformed is a DataError."""
    return parse_idx(read_bytes(path), path)


def read_bytes(path: Path) -> bytes:
    """The decompressed bytes of a raw or .gz file."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return gunzip(blob, path) if path.name.endswith(".gz") else blob


def gunzip(blob: bytes, where: Path | str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as handle:
            data = handle.read(MAX_BYTES + 1)  # capped, so a gzip bomb stops here
    except EOFError:
        raise DataError(f"{where}: truncated gzip data ({len(blob)} bytes)") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{where}: not valid gzip data ({err})") from None
    if len(data) > MAX_BYTES:
        raise DataError(f"{where}: inflates past {MAX_BYTES >> 20} MiB; not an MNIST file")
    return data


def parse_idx(data: bytes, path: Path) -> np.ndarray:
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


def check_hash(dataset: str, name: str, got: str, path: Path, source: str) -> None:
    expected = SHA256[dataset][name]
    if got != expected:
        kind = source.split(" ", 1)[0]
        raise DataError(
            f"{path} ({kind}): {name}: sha256 mismatch: expected {expected[:16]}, got {got[:16]}"
            + _HINTS.get(kind, "")
        )


def find_file(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):  # raw first: it skips the inflate
        if path.is_file():
            return path
    return None


def missing_files(folder: Path) -> list[str]:
    return [name for name in FILES if find_file(folder, name) is None]
