"""A map-style classification dataset yielding ``(x, y, t)`` items, as Avalanche datasets do.

A :class:`ClassificationDataset` is a view: it holds a *source* (a tensor of inputs, any map-style
dataset whose items start with the input, or a concatenation of other views), an optional index
tensor into that source, and one target and one task label per item. Subsets, class remapping and
transform changes make new views over the same source; the inputs themselves are never copied.

Transforms come in two kinds, following Avalanche:

* *frozen* transforms (``transform=`` here, or :meth:`ClassificationDataset.with_frozen_transform`)
  apply in every mode. A benchmark's pixel permutation is one.
* *group* transforms: ``train_transform`` applies after :meth:`ClassificationDataset.train`,
  ``eval_transform`` after :meth:`ClassificationDataset.eval`. Streams hand out train-stream datasets
  in train mode and test-stream datasets in eval mode; strategies switch with ``.train()``/``.eval()``.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

Transform = Callable[[Any], Any]

TRANSFORM_GROUPS = ("train", "eval")


def as_long_vector(values: Any, name: str, length: int | None = None) -> torch.Tensor:
    """``values`` as a fresh 1-D int64 tensor, or a TypeError/ValueError naming ``name``."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
    else:
        try:
            tensor = torch.as_tensor(values if isinstance(values, Sequence) else list(values))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a sequence of integers, got {type(values).__name__}") from err
    if tensor.numel() == 0:
        tensor = tensor.reshape(0).to(torch.long)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(tensor.shape)}")
    if length is not None and tensor.numel() != length:
        raise ValueError(f"{name} has {tensor.numel()} entries, expected {length} (one per sample)")
    return tensor.to(torch.long).clone()


def _check_transform(fn: Transform | None, name: str) -> None:
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")


class _ConcatSource:
    """Items of several datasets end to end; item ``i`` is the input only (frozen transforms applied)."""

    def __init__(self, parts: Sequence[ClassificationDataset]) -> None:
        self.parts = list(parts)
        self.ends: list[int] = []
        total = 0
        for part in self.parts:
            total += len(part)
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def input_at(self, index: int) -> Any:
        part_id = bisect.bisect_right(self.ends, index)
        start = self.ends[part_id - 1] if part_id else 0
        return self.parts[part_id]._frozen_input(index - start)


class ClassificationDataset(Dataset):
    """Map-style dataset of ``(x, y, t)``: input, class target (int), task label (int).

    Args:
        data: a tensor whose first dimension indexes samples, or a map-style dataset whose items are
            tuples/lists starting with the input (``(x, y, ...)``).
        targets: one integer class per sample. When None, ``data`` must be a dataset and the targets are
            read from it (see :meth:`from_dataset`).
        task_labels: one int for every sample, or one integer per sample. Default 0.
        transform: a callable applied to every input in every mode (a frozen transform).
        train_transform: applied to inputs in train mode (after ``transform``).
        eval_transform: applied to inputs in eval mode (after ``transform``).
        transform_group: the starting mode, ``"train"`` or ``"eval"``.

    Attributes:
        targets: LongTensor of class targets, one per item (do not modify in place).
        targets_task_labels: LongTensor of task labels, one per item.
        collate_fn: the collate function a DataLoader should use (``default_collate``), so that a batch
            is ``[x, y, t]``.
    """

    collate_fn = staticmethod(default_collate)

    def __init__(
        self,
        data: torch.Tensor | Dataset,
        targets: Sequence[int] | torch.Tensor | None = None,
        task_labels: int | Sequence[int] | torch.Tensor = 0,
        *,
        transform: Transform | None = None,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        transform_group: str = "train",
    ) -> None:
        if targets is None:
            if isinstance(data, torch.Tensor):
                raise ValueError("targets are required when data is a tensor")
            built = ClassificationDataset.from_dataset(data)
            data, targets = built._source, built.targets
        if isinstance(data, torch.Tensor):
            if data.dim() == 0:
                raise ValueError("data must have a sample dimension, got a 0-d tensor")
            source: Any = data
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            source = data
        else:
            raise TypeError(f"data must be a tensor or a map-style dataset, got {type(data).__name__}")
        n = len(source)
        for fn, name in ((transform, "transform"), (train_transform, "train_transform"),
                         (eval_transform, "eval_transform")):
            _check_transform(fn, name)
        if transform_group not in TRANSFORM_GROUPS:
            raise ValueError(f"transform_group must be one of {TRANSFORM_GROUPS}, got {transform_group!r}")
        self._source = source
        self._indices: torch.Tensor | None = None
        self.targets = as_long_vector(targets, "targets", n)
        self.targets_task_labels = self._task_label_vector(task_labels, n)
        self._frozen: tuple[Transform, ...] = (transform,) if transform is not None else ()
        self._groups: dict[str, Transform | None] = {"train": train_transform, "eval": eval_transform}
        self._group = transform_group
        self._classes: list[int] | None = None

    # ----------------------------------------------------------------------------------------------
    # construction helpers

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        targets: Sequence[int] | torch.Tensor | None = None,
        task_labels: int | Sequence[int] | torch.Tensor | None = None,
        transform: Transform | None = None,
    ) -> ClassificationDataset:
        """Wrap any map-style dataset whose items are ``(x, y, ...)``.

        A ClassificationDataset is returned as it is (with the overrides applied). A
        ``TensorDataset(x, y, ...)`` keeps ``x`` as a tensor source. Otherwise the targets come from
        ``targets``, else ``dataset.targets``, else one pass over the dataset reading ``item[1]``; task
        labels from ``task_labels``, else ``dataset.targets_task_labels``, else 0.
        """
        if isinstance(dataset, ClassificationDataset):
            out = dataset
            if targets is not None:
                out = out._copy(targets=as_long_vector(targets, "targets", len(out)), classes=None)
            if task_labels is not None:
                out = out.with_task_labels(task_labels)
            return out.with_frozen_transform(transform) if transform is not None else out
        if isinstance(dataset, torch.Tensor) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"dataset must be a map-style dataset, got {type(dataset).__name__}")
        source: Any = dataset
        if isinstance(dataset, TensorDataset):
            if len(dataset.tensors) < 2:
                raise ValueError("a TensorDataset needs at least two tensors (inputs, targets)")
            source = dataset.tensors[0]
            if targets is None:
                targets = dataset.tensors[1]
        if targets is None:
            targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [cls._target_of(dataset[i], i) for i in range(len(dataset))]
        if task_labels is None:
            task_labels = getattr(dataset, "targets_task_labels", 0)
        return cls(source, targets, task_labels, transform=transform)

    @staticmethod
    def _target_of(item: Any, index: int) -> int:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"item {index} of the dataset is not an (x, y, ...) tuple; pass targets explicitly")
        try:
            return operator.index(item[1]) if not isinstance(item[1], torch.Tensor) else int(item[1].item())
        except TypeError as err:
            raise TypeError(f"item {index} has a non-integer target {item[1]!r}") from err

    @staticmethod
    def _task_label_vector(task_labels: int | Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
        if isinstance(task_labels, bool):
            raise TypeError("task_labels must be an int or one integer per sample, got a bool")
        if isinstance(task_labels, int):
            return torch.full((n,), task_labels, dtype=torch.long)
        return as_long_vector(task_labels, "task_labels", n)

    def _copy(self, **fields: Any) -> ClassificationDataset:
        out = object.__new__(ClassificationDataset)
        out.__dict__.update(self.__dict__)
        out._groups = dict(self._groups)
        for key, value in fields.items():
            setattr(out, key if key in ("targets", "targets_task_labels") else f"_{key}", value)
        return out

    # ----------------------------------------------------------------------------------------------
    # item access

    def __len__(self) -> int:
        return self.targets.numel()

    def _source_index(self, position: int) -> int:
        return position if self._indices is None else int(self._indices[position])

    def _frozen_input(self, position: int) -> Any:
        index = self._source_index(position)
        source = self._source
        if isinstance(source, torch.Tensor):
            x = source[index]
        elif isinstance(source, _ConcatSource):
            x = source.input_at(index)
        else:
            item = source[index]
            if not isinstance(item, (tuple, list)) or not item:
                raise TypeError(f"source item {index} is not an (x, y, ...) tuple")
            x = item[0]
        for fn in self._frozen:
            x = fn(x)
        return x

    def _normalise_position(self, index: Any) -> int:
        try:
            position = operator.index(index)
        except TypeError as err:
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}") from err
        n = len(self)
        if not -n <= position < n:
            raise IndexError(f"index {position} is out of range for a dataset of {n} items")
        return position + n if position < 0 else position

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        position = self._normalise_position(index)
        x = self._frozen_input(position)
        group_fn = self._groups[self._group]
        if group_fn is not None:
            x = group_fn(x)
        return x, int(self.targets[position]), int(self.targets_task_labels[position])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int, int]]:
        """Many items at once (DataLoader calls this): one gather from a tensor source, not one per item."""
        if not isinstance(self._source, torch.Tensor):
            return [self[i] for i in indices]
        positions = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(self)
        if positions.numel() and (int(positions.min()) < -n or int(positions.max()) >= n):
            raise IndexError(f"batch indices out of range for a dataset of {n} items")
        positions = torch.where(positions < 0, positions + n, positions)
        rows = positions if self._indices is None else self._indices[positions]
        xb = self._source[rows]
        per_sample: list[Transform] = []
        for fn in self._frozen:
            batch_fn = getattr(fn, "apply_batch", None)
            if batch_fn is not None and not per_sample:
                xb = batch_fn(xb)
            else:
                per_sample.append(fn)
        group_fn = self._groups[self._group]
        if group_fn is not None:
            per_sample.append(group_fn)
        xs: list[Any] = list(xb.unbind(0))
        for fn in per_sample:
            xs = [fn(x) for x in xs]
        ys, ts = self.targets[positions].tolist(), self.targets_task_labels[positions].tolist()
        return list(zip(xs, ys, ts, strict=True))

    # ----------------------------------------------------------------------------------------------
    # views

    @property
    def classes(self) -> list[int]:
        """Sorted distinct class targets of this dataset."""
        if self._classes is None:
            self._classes = torch.unique(self.targets).tolist()
        return list(self._classes)

    @property
    def task_set(self) -> list[int]:
        """Sorted distinct task labels of this dataset."""
        return torch.unique(self.targets_task_labels).tolist()

    @property
    def transform_group(self) -> str:
        """The current transform group, ``"train"`` or ``"eval"``."""
        return self._group

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ClassificationDataset:
        """The items at ``indices`` (positions in this dataset, in that order), sharing the source."""
        positions = as_long_vector(indices, "indices")
        n = len(self)
        if positions.numel() and (int(positions.min()) < -n or int(positions.max()) >= n):
            raise IndexError(f"subset indices must lie in [-{n}, {n}) for a dataset of {n} items")
        positions = torch.where(positions < 0, positions + n, positions)
        source_rows = positions if self._indices is None else self._indices[positions]
        return self._copy(indices=source_rows, targets=self.targets[positions],
                          targets_task_labels=self.targets_task_labels[positions], classes=None)

    def train(self) -> ClassificationDataset:
        """This dataset with the train transform group active."""
        return self._copy(group="train")

    def eval(self) -> ClassificationDataset:
        """This dataset with the eval transform group active."""
        return self._copy(group="eval")

    def with_transforms(
        self, *, train_transform: Transform | None = None, eval_transform: Transform | None = None
    ) -> ClassificationDataset:
        """This dataset with the train and eval group transforms replaced (None removes one)."""
        _check_transform(train_transform, "train_transform")
        _check_transform(eval_transform, "eval_transform")
        return self._copy(groups={"train": train_transform, "eval": eval_transform})

    def with_frozen_transform(self, transform: Transform) -> ClassificationDataset:
        """This dataset with ``transform`` appended to the transforms applied in every mode."""
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        return self._copy(frozen=(*self._frozen, transform))

    def with_task_labels(self, task_labels: int | Sequence[int] | torch.Tensor) -> ClassificationDataset:
        """This dataset with its task labels replaced (one int for all items, or one per item)."""
        return self._copy(targets_task_labels=self._task_label_vector(task_labels, len(self)))

    def remap_targets(self, mapping: Sequence[int] | torch.Tensor) -> ClassificationDataset:
        """This dataset with each target ``y`` replaced by ``mapping[y]``.

        ``mapping`` is a lookup table indexed by the current class ids; an entry of -1 marks a class
        that must not occur (ValueError when it does).
        """
        table = as_long_vector(mapping, "mapping")
        if len(self) == 0:
            return self._copy()
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= table.numel():
            raise ValueError(f"mapping has {table.numel()} entries but targets range over "
                             f"[{int(self.targets.min())}, {int(self.targets.max())}]")
        new_targets = table[self.targets]
        if bool((new_targets < 0).any()):
            missing = torch.unique(self.targets[new_targets < 0]).tolist()
            raise ValueError(f"mapping sends classes {missing} to -1 (unmapped)")
        return self._copy(targets=new_targets, classes=None)

    def concat(self, *others: ClassificationDataset) -> ClassificationDataset:
        """These datasets end to end (transform groups and mode from ``self``)."""
        parts = [self, *others]
        for part in others:
            if not isinstance(part, ClassificationDataset):
                raise TypeError(f"can only concatenate ClassificationDataset objects, got {type(part).__name__}")
        targets = torch.cat([p.targets for p in parts])
        task_labels = torch.cat([p.targets_task_labels for p in parts])
        same_source = all(p._source is self._source and p._frozen == self._frozen for p in parts)
        if same_source:
            n_source = len(self._source)
            rows = torch.cat([p._indices if p._indices is not None else torch.arange(n_source) for p in parts])
            return self._copy(indices=rows, targets=targets, targets_task_labels=task_labels, classes=None)
        return self._copy(source=_ConcatSource(parts), indices=None, frozen=(), targets=targets,
                          targets_task_labels=task_labels, classes=None)

    def __add__(self, other: ClassificationDataset) -> ClassificationDataset:
        return self.concat(other)

    def __repr__(self) -> str:
        return (f"ClassificationDataset(n={len(self)}, classes={self.classes}, tasks={self.task_set}, "
                f"mode={self._group!r})")


def concat_datasets(datasets: Iterable[ClassificationDataset]) -> ClassificationDataset:
    """Concatenate a non-empty iterable of datasets (see :meth:`ClassificationDataset.concat`)."""
    parts = list(datasets)
    if not parts:
        raise ValueError("concat_datasets needs at least one dataset")
    return parts[0].concat(*parts[1:])
