"""Experiences, streams and the benchmark object that holds a train and a test stream.

The attributes mirror Avalanche's: what strategies and plugins read from an experience is
``.dataset`` (with ``.targets`` and ``.targets_task_labels``), ``.current_experience``,
``.classes_in_this_experience``, ``.task_labels`` and ``.origin_stream`` (with its ``.name``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import torch

from .dataset import ClassificationDataset


class CLExperience:
    """One experience of a stream: a dataset plus its position and class bookkeeping.

    Args:
        dataset: the experience's data.
        current_experience: the experience's index in its stream.
        origin_stream: the stream the experience belongs to.
    """

    def __init__(self, dataset: ClassificationDataset, current_experience: int, origin_stream: CLStream) -> None:
        if not isinstance(dataset, ClassificationDataset):
            raise TypeError(f"dataset must be a ClassificationDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.current_experience = current_experience
        self.origin_stream = origin_stream

    @property
    def benchmark(self) -> CLScenario | None:
        """The benchmark this experience's stream belongs to."""
        return self.origin_stream.benchmark

    @property
    def classes_in_this_experience(self) -> list[int]:
        """Sorted class ids present in this experience's dataset."""
        return self.origin_stream._classes_of(self.current_experience)

    @property
    def previous_classes(self) -> list[int]:
        """Sorted class ids of the stream's earlier experiences."""
        return self.origin_stream._classes_union(0, self.current_experience)

    @property
    def classes_seen_so_far(self) -> list[int]:
        """Sorted class ids of the stream's experiences up to and including this one."""
        return self.origin_stream._classes_union(0, self.current_experience + 1)

    @property
    def future_classes(self) -> list[int]:
        """Sorted class ids of the stream's later experiences."""
        return self.origin_stream._classes_union(self.current_experience + 1, len(self.origin_stream._experiences))

    @property
    def task_labels(self) -> list[int]:
        """Sorted distinct task labels of this experience's samples."""
        return self.dataset.task_set

    @property
    def task_label(self) -> int:
        """The experience's single task label (ValueError when it has several)."""
        labels = self.task_labels
        if len(labels) != 1:
            raise ValueError(f"experience {self.current_experience} has task labels {labels}, not exactly one")
        return labels[0]

    def __repr__(self) -> str:
        return (f"CLExperience({self.origin_stream.name}[{self.current_experience}], n={len(self.dataset)}, "
                f"classes={self.classes_in_this_experience}, tasks={self.task_labels})")


class CLStream:
    """A named sequence of experiences; supports len, indexing, slicing and iteration.

    A slice is a stream of the same name holding the same experience objects, which keep their
    original ``current_experience`` and ``origin_stream``.
    """

    def __init__(self, name: str, datasets: Sequence[ClassificationDataset], benchmark: CLScenario | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError("a stream needs a non-empty name")
        self.name = name
        self.benchmark = benchmark
        self._experiences = [CLExperience(ds, i, self) for i, ds in enumerate(datasets)]
        self._selection: list[int] = list(range(len(self._experiences)))
        self._class_cache: dict[int, list[int]] = {}

    def _classes_of(self, exp_id: int) -> list[int]:
        if exp_id not in self._class_cache:
            self._class_cache[exp_id] = self._experiences[exp_id].dataset.classes
        return list(self._class_cache[exp_id])

    def _classes_union(self, start: int, stop: int) -> list[int]:
        seen: set[int] = set()
        for exp_id in range(start, stop):
            seen.update(self._classes_of(exp_id))
        return sorted(seen)

    def __len__(self) -> int:
        return len(self._selection)

    @overload
    def __getitem__(self, item: int) -> CLExperience: ...

    @overload
    def __getitem__(self, item: slice) -> CLStream: ...

    def __getitem__(self, item: int | slice | Sequence[int]) -> CLExperience | CLStream:
        if isinstance(item, slice):
            return self._view(self._selection[item])
        if isinstance(item, (list, tuple, range)):
            picked = []
            for i in item:
                picked.append(self._selection[self._position(i)])
            return self._view(picked)
        return self._experiences[self._selection[self._position(item)]]

    def _position(self, item: Any) -> int:
        if isinstance(item, bool) or not (isinstance(item, (int, torch.Tensor)) or hasattr(item, "__index__")):
            raise TypeError(f"stream indices must be integers or slices, got {type(item).__name__}")
        position = int(item)
        n = len(self._selection)
        if not -n <= position < n:
            raise IndexError(f"experience index {position} out of range for a stream of {n}")
        return position % n

    def _view(self, selection: list[int]) -> CLStream:
        view = object.__new__(CLStream)
        view.__dict__.update(self.__dict__)
        view._selection = list(selection)
        return view

    def __iter__(self) -> Iterator[CLExperience]:
        return (self._experiences[i] for i in self._selection)

    def __repr__(self) -> str:
        return f"CLStream(name={self.name!r}, n_experiences={len(self)})"


def _classes_order_from(classes_per_exp: Sequence[Sequence[int]]) -> list[int]:
    order: list[int] = []
    for classes in classes_per_exp:
        order.extend(c for c in classes if c not in order)
    return order


class CLScenario:
    """A benchmark: a train stream and a test stream of experiences (Avalanche's scenario object).

    Args:
        train_datasets: one dataset per training experience.
        test_datasets: one dataset per test experience.
        complete_test_set_only: True when the test stream is one experience holding the whole test set.
        classes_order: the class order (remapped ids); default: train classes in order of appearance.
        classes_order_original_ids: the class order in the original ids; default ``classes_order``.
        original_classes_in_exp: per train experience, its classes in the original ids.
        n_classes: the number of classes; default the distinct train classes.

    Attributes:
        train_stream, test_stream: the two :class:`CLStream` objects (also in ``streams``).
        n_experiences: the number of training experiences.
        classes_in_experience: ``{"train": [set, ...], "test": [set, ...]}``, classes per experience.
    """

    def __init__(
        self,
        train_datasets: Sequence[ClassificationDataset],
        test_datasets: Sequence[ClassificationDataset],
        *,
        complete_test_set_only: bool = False,
        classes_order: Sequence[int] | None = None,
        classes_order_original_ids: Sequence[int] | None = None,
        original_classes_in_exp: Sequence[set[int]] | None = None,
        n_classes: int | None = None,
    ) -> None:
        if len(train_datasets) == 0:
            raise ValueError("a benchmark needs at least one training experience")
        if complete_test_set_only and len(test_datasets) != 1:
            raise ValueError(f"complete_test_set_only needs exactly one test dataset, got {len(test_datasets)}")
        self.train_stream = CLStream("train", train_datasets, self)
        self.test_stream = CLStream("test", test_datasets, self)
        self.streams = {"train": self.train_stream, "test": self.test_stream}
        self.complete_test_set_only = complete_test_set_only
        train_classes = [exp.classes_in_this_experience for exp in self.train_stream]
        self.classes_order: list[int] = (list(classes_order) if classes_order is not None
                                         else _classes_order_from(train_classes))
        self.classes_order_original_ids: list[int] = (list(classes_order_original_ids)
                                                      if classes_order_original_ids is not None
                                                      else list(self.classes_order))
        self.original_classes_in_exp: list[set[int]] = (
            [set(s) for s in original_classes_in_exp] if original_classes_in_exp is not None
            else [set(c) for c in train_classes])
        all_train = set().union(*train_classes)
        self.n_classes: int = n_classes if n_classes is not None else len(all_train)

    @property
    def n_experiences(self) -> int:
        """The number of training experiences."""
        return len(self.train_stream)

    @property
    def classes_in_experience(self) -> dict[str, list[set[int]]]:
        """Classes present in each experience of each stream."""
        return {name: [set(exp.classes_in_this_experience) for exp in stream] for name, stream in self.streams.items()}

    @property
    def n_classes_per_exp(self) -> list[int]:
        """The number of classes of each training experience."""
        return [len(exp.classes_in_this_experience) for exp in self.train_stream]

    def classes_in_exp_range(self, exp_start: int, exp_end: int | None = None) -> list[int]:
        """The classes of training experiences ``[exp_start, exp_end)``, experience by experience."""
        out: list[int] = []
        for exp in self.train_stream[exp_start:exp_end]:
            out.extend(exp.classes_in_this_experience)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_experiences={self.n_experiences}, n_classes={self.n_classes}, "
                f"test_experiences={len(self.test_stream)})")


class NCScenario(CLScenario):
    """A new-classes benchmark (class- or task-incremental), as built by ``nc_benchmark``.

    Extra attributes: ``class_mapping`` (original id -> remapped id, -1 for unused classes),
    ``class_ids_from_zero_from_first_exp``, ``class_ids_from_zero_in_each_exp``.
    """

    def __init__(self, train_datasets: Sequence[ClassificationDataset], test_datasets: Sequence[ClassificationDataset],
                 *, class_mapping: Sequence[int], class_ids_from_zero_from_first_exp: bool,
                 class_ids_from_zero_in_each_exp: bool, n_classes_per_exp: Sequence[int], **kwargs: Any) -> None:
        super().__init__(train_datasets, test_datasets, **kwargs)
        self.class_mapping = list(class_mapping)
        self.class_ids_from_zero_from_first_exp = class_ids_from_zero_from_first_exp
        self.class_ids_from_zero_in_each_exp = class_ids_from_zero_in_each_exp
        self._n_classes_per_exp = list(n_classes_per_exp)

    @property
    def n_classes_per_exp(self) -> list[int]:
        """The number of classes assigned to each experience."""
        return list(self._n_classes_per_exp)


class NIScenario(CLScenario):
    """A new-instances benchmark, as built by ``ni_benchmark``: one test experience with all test data.

    Extra attribute: ``train_exps_patterns_assignment``, the training-set indices of each experience.
    """

    def __init__(self, train_datasets: Sequence[ClassificationDataset], test_datasets: Sequence[ClassificationDataset],
                 *, train_exps_patterns_assignment: Sequence[torch.Tensor], **kwargs: Any) -> None:
        super().__init__(train_datasets, test_datasets, complete_test_set_only=True, **kwargs)
        self.train_exps_patterns_assignment = [t.tolist() for t in train_exps_patterns_assignment]
