"""``mnist-mlp``: the paper's fully connected MNIST classifier, on the standard IDX files.

No installable package ships MNIST, so the task reads the four IDX files (optionally gzipped) from a
folder, and `download_mnist` fetches them when, and only when, it is called (``koopsweep data download
mnist``). Nothing here touches the network at import time or while training.

Folder lookup: the task parameter ``data_dir``; if empty, ``$KOOPSWEEP_DATA/mnist`` when the
environment variable ``KOOPSWEEP_DATA`` (a data root) is set; else ``./data/mnist``. See
`resolve_mnist_dir`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from koopsweep._params import require
from koopsweep.errors import KoopsweepError, UsageError
from koopsweep.tasks._common import ClassificationTask, is_int

#: The four files, by role.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: IDX magic numbers: 0x00000803 = unsigned bytes, 3 dimensions; 0x00000801 = unsigned bytes, 1 dimension.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
#: Mirrors of the gzipped files, tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: MD5 checksums of the official gzipped files.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DATA_ENV = "KOOPSWEEP_DATA"
IMAGE_SHAPE = (28, 28)


class IDXFormatError(UsageError):
    """A file is not a valid IDX file of the expected kind (wrong magic number, truncated, bad gzip)."""


# --------------------------------------------------------------------------------------------------
# IDX files

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzipped if its name ends in ``.gz`` or its content starts with the gzip magic).

    Raises `IDXFormatError` naming the file for a bad gzip stream, a wrong or unknown magic number,
    or a size that does not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt gzip stream ({exc}); delete it and download it again") from exc
    elif path.suffix == ".gz":
        raise IDXFormatError(f"{path}: not a gzip file (it ends in .gz but does not start with the gzip magic 1f 8b)")

    def bad(problem: str) -> IDXFormatError:
        hint = " Delete it and download it again (koopsweep data download mnist)."
        return IDXFormatError(f"{path}: not a valid IDX file: {problem}.{hint}")

    if len(raw) < 4:
        raise bad(f"only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise bad(f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise bad(f"magic number 0x{magic:08x} is not an IDX magic number")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"header truncated ({len(raw)} bytes, {header} needed for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise bad(f"header says shape {dims} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``); used by tests and tools."""
    codes = {dtype: code for code, dtype in _IDX_DTYPES.items()}
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder(">")
    if dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    data = bytes([0, 0, codes[dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += np.ascontiguousarray(arr, dtype=dtype).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# --------------------------------------------------------------------------------------------------
# The folder and its files


def resolve_mnist_dir(data_dir: str | os.PathLike[str] = "") -> Path:
    """The MNIST folder: ``data_dir`` if given, else ``$KOOPSWEEP_DATA/mnist``, else ``./data/mnist``."""
    if str(data_dir):
        return Path(data_dir).expanduser()
    root = os.environ.get(DATA_ENV, "").strip()
    return (Path(root).expanduser() if root else Path("data")) / "mnist"


def find_mnist_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The path of each file present in ``folder`` (plain or ``.gz``), and the names of the missing ones."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, name in MNIST_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def load_mnist(data_dir: str | os.PathLike[str] = "") -> dict[str, np.ndarray]:
    """The four arrays (uint8 images ``(n, 28, 28)``, uint8 labels ``(n,)``), checked for consistency.

    Raises `UsageError` naming the folder and the missing files (and how to get them), or
    `IDXFormatError` for a corrupt file.
    """
    folder = resolve_mnist_dir(data_dir)
    found, missing = find_mnist_files(folder)
    if missing:
        raise UsageError(
            f"MNIST data not found in {folder.resolve()}: missing {', '.join(missing)} (plain or .gz). "
            f"Download them with `koopsweep data download mnist --data-dir {folder}`, or set the task "
            f"parameter data_dir (or ${DATA_ENV}, a data root holding mnist/) to a folder that has them."
        )
    key = tuple(
        (role, str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for role, path in found.items()
    )
    return _load_checked(key)


@functools.lru_cache(maxsize=2)
def _load_checked(key: tuple[tuple[str, str, int, int], ...]) -> dict[str, np.ndarray]:
    """Parse and check the files once per process (keyed by path, size and mtime); arrays are read-only."""
    found = {role: Path(path) for role, path, _, _ in key}
    arrays = {
        role: read_idx(path, IMAGES_MAGIC if role.endswith("images") else LABELS_MAGIC) for role, path in found.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = f"{found[f'{split}_images']} / {found[f'{split}_labels']}"
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise IDXFormatError(f"{where}: images have shape {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise IDXFormatError(f"{where}: {len(images)} images but {len(labels)} labels")
        if len(labels) == 0:
            raise IDXFormatError(f"{where}: no images")
        if labels.max() > 9:
            raise IDXFormatError(f"{where}: label {int(labels.max())} is not a digit 0-9")
    return arrays


def download_mnist(
    dest: str | os.PathLike[str],
    urls: Sequence[str] = MNIST_MIRRORS,
    *,
    checksums: Mapping[str, str] | None = MNIST_MD5,
    overwrite: bool = False,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download the four gzipped MNIST files into ``dest`` (created if needed); return their paths.

    ``urls`` are mirror base URLs tried in order for each file (``file://`` URLs work too). A file
    already in ``dest`` (plain or ``.gz``) is kept unless ``overwrite``. Each download goes to a
    ``.part`` file, is checked against ``checksums`` (MD5 of the ``.gz``; None skips the check) and
    parsed as IDX before it is renamed into place. Raises `KoopsweepError` if every mirror fails.
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    paths: list[Path] = []
    found, _ = find_mnist_files(dest)
    for role, name in MNIST_FILES.items():
        if role in found and not overwrite:
            say(f"{found[role]} already present")
            paths.append(found[role])
            continue
        filename = f"{name}.gz"
        target = dest / filename
        part = dest / f"{filename}.part"
        errors: list[str] = []
        for base in urls:
            url = base.rstrip("/") + "/" + filename
            say(f"downloading {url}")
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
                    digest = hashlib.md5()
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                expected_md5 = (checksums or {}).get(filename)
                if expected_md5 is not None and digest.hexdigest() != expected_md5:
                    raise ValueError(f"MD5 {digest.hexdigest()} does not match the expected {expected_md5}")
                read_idx(part, IMAGES_MAGIC if role.endswith("images") else LABELS_MAGIC)
            except Exception as exc:  # a failed mirror is reported and the next one tried
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                part.unlink(missing_ok=True)
                continue
            part.replace(target)
            paths.append(target)
            break
        else:
            raise KoopsweepError(f"could not download {filename} into {dest}; tried: " + "; ".join(errors))
    return paths


# --------------------------------------------------------------------------------------------------
# The task


class MNISTMLP(ClassificationTask):
    """A fully connected MNIST classifier, cross-entropy (the paper's second task).

    Parameters:
        hidden: hidden widths (default [20, 20, 20]: the 784-20-20-20-10 network of reimplementations).
        activation: relu, tanh, gelu, sigmoid or sin (default relu).
        batch_size: 100 (default) = seeded minibatches (the paper used stochastic Adadelta);
            0 = all training images every step (deterministic).
        n_train: use the first n_train training images (default 0 = all 60,000).
        data_dir: folder of the IDX files (default "": ``$KOOPSWEEP_DATA/mnist``, else ``./data/mnist``).
        eval_split: "test" (default) = loss on the held-out set; "train" = on the whole training set.

    Pixels are scaled to [0, 1] and standardised with the training images' mean and standard deviation.
    The evaluation set is the 10,000 t10k images.
    """

    default_budget: ClassVar[int] = 3000
    # Not tuned (no MNIST on the tuning machines): common MNIST-MLP values, in line with what the tuning
    # found for mnist1d-mlp in the same regime (an MLP, minibatches of 100). See docs/tasks.md.
    baseline_lrs: ClassVar[dict[str, float]] = {"adam": 1e-3, "adadelta": 1.0, "sgd": 0.03, "adagrad": 0.03}
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": (20, 20, 20),
        "activation": "relu",
        "batch_size": 100,
        "n_train": 0,
        "data_dir": "",
        "eval_split": "test",
    }

    n_inputs = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    n_classes = 10

    def validate_params(self) -> None:
        super().validate_params()
        p = self.params
        require(is_int(p["n_train"]) and p["n_train"] >= 0, self, "n_train", p["n_train"], "an int >= 0 (0 = all)")
        require(isinstance(p["data_dir"], (str, os.PathLike)), self, "data_dir", p["data_dir"], "a folder path")

    @property
    def data_dir(self) -> Path:
        """The folder the IDX files are read from."""
        return resolve_mnist_dir(self.params["data_dir"])

    def _make_data(self) -> dict[str, torch.Tensor]:
        arrays = load_mnist(self.params["data_dir"])
        train_images = arrays["train_images"]
        train_labels = arrays["train_labels"]
        if self.params["n_train"]:
            train_images = train_images[: self.params["n_train"]]
            train_labels = train_labels[: self.params["n_train"]]
        x = torch.from_numpy(train_images.reshape(len(train_images), -1).astype(np.float32) / 255.0)
        x_eval = torch.from_numpy(
            arrays["test_images"].reshape(len(arrays["test_images"]), -1).astype(np.float32) / 255.0
        )
        mean, std = float(x.mean()), float(x.std()) or 1.0
        return {
            "x": (x - mean) / std,
            "y": torch.from_numpy(train_labels.astype(np.int64)),
            "x_eval": (x_eval - mean) / std,
            "y_eval": torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        }
