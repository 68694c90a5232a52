"""Task-aware models with Avalanche's names: ``MultiTaskModule``, ``MultiHeadClassifier`` and ``MultiHeadMLP``.

A :class:`MultiTaskModule` takes ``forward(x, task_labels)`` and routes every sample to
``forward_single_task(x, task_label)``. The training templates recognise these models by class name
(:func:`clfast.training.utils.is_task_aware`) and pass the minibatch's task labels; at the start of every
experience, in training and in evaluation, they call ``adaptation(experience)`` on every module that has one,
which is where :class:`MultiHeadClassifier` creates the head of a task label it has not seen.

Combining the outputs of a batch that mixes tasks: each task's sub-batch gives its own output, and outputs
that differ only in their last dimension (heads of different widths) are padded on the right to the widest
one *of the tasks in the batch* with ``pad_value``. Avalanche pads with zeros (to ``max_class_label``, the
widest head so far); clfast's default is ``-1000.0`` (Avalanche's masking value) because a zero column can win the
argmax over negative logits and takes softmax mass, so a sample's prediction and cross-entropy would depend
on the other samples in its batch. With ``-1000`` they do not: ``exp(-1000 - max)`` is 0 in float32 and
float64, and the value stays finite (``-inf`` would give NaN in a KL divergence). A single-task batch is
returned unpadded, at its head's width, as in Avalanche.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_float, check_int, is_int

__all__ = ["DEFAULT_PAD_VALUE", "MultiHeadClassifier", "MultiHeadMLP", "MultiTaskModule"]

DEFAULT_PAD_VALUE = -1000.0
"""What fills the missing columns of a narrower head's output in a mixed-task batch (see the module doc)."""


def _task_tensor(task_labels: Tensor, x: Tensor) -> Tensor:
    """``task_labels`` as a 1-D int64 tensor with one entry per sample of ``x``, on ``x``'s device."""
    if task_labels.is_floating_point() or task_labels.is_complex() or task_labels.dtype == torch.bool:
        raise TypeError(f"task_labels must hold integers, got dtype {task_labels.dtype}")
    n = x.shape[0] if x.dim() else None
    if n is None or task_labels.shape != (n,):
        raise ValueError(f"task_labels must have one label per sample of x (shape ({n},)), got shape "
                         f"{tuple(task_labels.shape)}")
    return task_labels.to(device=x.device, dtype=torch.long)


def _combine(outputs: list[Any], pad_value: float) -> Tensor:
    """The per-task outputs (in sorted-task order) as one tensor: padded on the last dimension when they
    differ there only (see the module doc)."""
    for out in outputs:
        if not isinstance(out, Tensor) or out.dim() == 0:
            raise TypeError("forward_single_task must return a tensor with a batch dimension to combine the "
                            f"outputs of a mixed-task batch, got {type(out).__name__}")
    if len({tuple(o.shape[1:]) for o in outputs}) == 1:
        return torch.cat(outputs)
    if any(o.dim() < 2 for o in outputs) or len({tuple(o.shape[1:-1]) for o in outputs}) != 1:
        shapes = sorted({tuple(o.shape[1:]) for o in outputs})
        raise ValueError(f"the tasks' outputs differ in more than their last dimension ({shapes}); they cannot "
                         "be padded into one tensor")
    width = max(o.shape[-1] for o in outputs)
    return torch.cat([nn.functional.pad(o, (0, width - o.shape[-1]), value=pad_value) for o in outputs])


class MultiTaskModule(nn.Module):
    """Base class of task-aware modules (Avalanche's ``MultiTaskModule``): subclasses implement
    :meth:`forward_single_task`; :meth:`forward` routes each sample there by its task label.

    Args:
        pad_value: fills the missing columns of narrower outputs in a mixed-task batch (finite; see the
            module doc).

    Attributes:
        known_train_tasks_labels: the task labels of the experiences this module was adapted to in training
            mode (evaluation-time adaptation does not add to it). Not part of ``state_dict()``, as in Avalanche.
    """

    def __init__(self, *, pad_value: float = DEFAULT_PAD_VALUE) -> None:
        super().__init__()
        self.pad_value = check_float("pad_value", pad_value)
        self.known_train_tasks_labels: set[int] = set()

    def adaptation(self, experience: Any) -> None:
        """Record the experience's task labels when in training mode; subclasses extend it (call ``super()``)."""
        if self.training:
            self.known_train_tasks_labels.update(int(t) for t in experience.task_labels)

    def forward_single_task(self, x: Any, task_label: int) -> Any:
        """The output for a batch whose samples all have ``task_label``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_single_task(x, task_label)")

    def forward_all_tasks(self, x: Any) -> dict[int, Any]:
        """``{task: forward_single_task(x, task)}`` for every known training task (Avalanche's ``t=None``)."""
        return {t: self.forward_single_task(x, t) for t in sorted(self.known_train_tasks_labels)}

    def forward(self, x: Any, task_labels: Tensor | int | None) -> Any:
        """Route samples by task label; the output keeps the input's sample order.

        ``task_labels``: one integer per sample (a tensor), one int for the whole batch, or ``None`` for
        :meth:`forward_all_tasks`. A batch with one distinct label calls ``forward_single_task(x, label)``
        on ``x`` itself (no gather); a mixed batch is sorted by label (stably), each task's contiguous
        sub-batch goes through ``forward_single_task``, and the combined outputs (padded as the module doc
        says) are put back in the input's order.
        """
        if task_labels is None:
            return self.forward_all_tasks(x)
        if is_int(task_labels):
            return self.forward_single_task(x, task_labels)
        if not isinstance(task_labels, Tensor):
            raise TypeError(f"task_labels must be an int, a tensor of integers or None, got "
                            f"{type(task_labels).__name__}")
        if not isinstance(x, Tensor):
            raise TypeError(f"a tensor of task labels needs a tensor input, got {type(x).__name__}")
        labels = _task_tensor(task_labels, x)
        if labels.numel() == 0:
            raise ValueError("an empty batch has no task label to route by")
        tasks, counts = torch.unique(labels, sorted=True, return_counts=True)
        task_list = tasks.tolist()  # the one host sync of the routing
        if len(task_list) == 1:
            return self.forward_single_task(x, task_list[0])
        order = torch.argsort(labels, stable=True)
        parts = x.index_select(0, order).split(counts.tolist())
        grouped = _combine([self.forward_single_task(part, t) for part, t in zip(parts, task_list, strict=True)],
                           self.pad_value)
        # grouped[j] is the output of sample order[j]; invert the permutation to restore the input order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return grouped.index_select(0, inverse.to(grouped.device))


class MultiHeadClassifier(MultiTaskModule):
    """One linear head per task label (Avalanche's ``MultiHeadClassifier``), keyed by ``str(task)`` in
    the ``nn.ModuleDict`` ``classifiers``.

    Head ``"0"`` exists from construction (as in Avalanche: an optimizer refuses a module without
    parameters); :meth:`adaptation` creates the heads of new task labels and widens a head whose task
    brings a class id beyond its width, so every head has ``max(initial_out_features, largest class id of
    its task + 1)`` outputs. A widened head is a new ``nn.Linear`` whose leading rows are the old ones
    (Avalanche's ``IncrementalClassifier``); the template's ``make_optimizer`` adds new heads' parameters
    to the optimizer. Heads are created in evaluation too (evaluating a task before training it gives an
    untrained head, as in Avalanche), drawing their initial weights from torch's global generator.
    Avalanche's masking of a head's never-trained units is not implemented: give each task's classes the
    ids ``0..k-1`` (``class_ids_from_zero_in_each_exp``) so that no unit is unused.

    ``load_state_dict`` creates (or resizes) the heads that the state dict holds, so a fresh model loads
    a trained one's state.

    Args:
        in_features: the size of each input sample.
        initial_out_features: the width of a new head.
        pad_value: see :class:`MultiTaskModule`.

    Raises:
        ValueError: at forward, for a task label without a head.
    """

    def __init__(self, in_features: int, initial_out_features: int = 2, *,
                 pad_value: float = DEFAULT_PAD_VALUE) -> None:
        super().__init__(pad_value=pad_value)
        self.in_features = check_int("in_features", in_features, low=1)
        self.initial_out_features = check_int("initial_out_features", initial_out_features, low=1)
        self.classifiers = nn.ModuleDict({"0": nn.Linear(in_features, initial_out_features)})

    def _new_head(self, width: int) -> nn.Linear:
        """A fresh ``nn.Linear(in_features, width)`` on the device and dtype of the existing heads."""
        like = next(iter(self.classifiers.values()), None)
        factory = {} if like is None else {"device": like.weight.device, "dtype": like.weight.dtype}
        return nn.Linear(self.in_features, width, **factory)

    @torch.no_grad()
    def adaptation(self, experience: Any) -> None:
        """Create a head for every new task label of ``experience`` and widen heads to its class ids."""
        super().adaptation(experience)
        for task, top_class in _largest_class_per_task(experience).items():
            key = str(task)
            width = max(self.initial_out_features, top_class + 1)
            if key not in self.classifiers:
                self.classifiers[key] = self._new_head(width)
            elif self.classifiers[key].out_features < width:
                old, head = self.classifiers[key], self._new_head(width)
                head.weight[: old.out_features] = old.weight
                head.bias[: old.out_features] = old.bias
                self.classifiers[key] = head

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Head ``task_label``'s output on ``x``."""
        key = str(int(task_label))
        if key not in self.classifiers:
            known = sorted(int(k) for k in self.classifiers)
            raise ValueError(f"MultiHeadClassifier has no head for task label {key} (heads: {known}); heads are "
                             "created by adaptation(experience), which the templates call at each experience start")
        return self.classifiers[key](x)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # nn.Module loads a parent before its children: a head made here is then filled by the ModuleDict.
        head_prefix = f"{prefix}classifiers."
        for name, value in state_dict.items():
            if not (name.startswith(head_prefix) and name.endswith(".weight")):
                continue
            key = name[len(head_prefix):-len(".weight")]
            if "." in key or not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != self.in_features:
                continue  # not one of our heads' weights: the ordinary loading reports it
            if key not in self.classifiers or self.classifiers[key].out_features != value.shape[0]:
                self.classifiers[key] = self._new_head(int(value.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args)


def _largest_class_per_task(experience: Any) -> dict[int, int]:
    """``{task label: largest class id among its samples}``, from the dataset's per-sample targets and task
    labels when it has them, else (Avalanche's way) every task label with the experience's largest class."""
    dataset = getattr(experience, "dataset", None)
    targets = getattr(dataset, "targets", None)
    tasks = getattr(dataset, "targets_task_labels", None)
    if isinstance(targets, Tensor) and isinstance(tasks, Tensor) and targets.shape == tasks.shape \
            and targets.numel() > 0:
        return {int(t): int(targets[tasks == t].max()) for t in torch.unique(tasks).tolist()}
    top = max(_as_ints(experience.classes_in_this_experience), default=-1)
    return {t: top for t in _as_ints(experience.task_labels)}


def _as_ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


class MultiHeadMLP(MultiTaskModule):
    """An MLP body and a :class:`MultiHeadClassifier` (Avalanche's ``MTSimpleMLP``, deeper on request):
    flatten, ``hidden_layers`` x (Linear to ``hidden_features``, ReLU, Dropout when ``dropout > 0``), then
    one head per task.

    The defaults, two hidden layers of 400 units, are the MLP of van de Ven & Tolias (2019) for Split-MNIST.
    The body runs once on the whole batch; only the heads are routed by task label.

    Args:
        in_features: the number of input values per sample (e.g. 784 for MNIST, 64 for the 8x8 digits).
        hidden_features: the width of each hidden layer.
        hidden_layers: the number of hidden layers (0: the heads read the flattened input).
        initial_out_features: the width of a new head.
        dropout: dropout probability after each hidden ReLU (0 adds no Dropout module).
        pad_value: see :class:`MultiTaskModule`.

    Attributes:
        features: the body, an ``nn.Sequential``.
        classifier: the :class:`MultiHeadClassifier`.
    """

    def __init__(self, in_features: int, hidden_features: int = 400, hidden_layers: int = 2,
                 initial_out_features: int = 2, *, dropout: float = 0.0, pad_value: float = DEFAULT_PAD_VALUE) -> None:
        super().__init__(pad_value=pad_value)
        check_int("in_features", in_features, low=1)
        check_int("hidden_features", hidden_features, low=1)
        check_int("hidden_layers", hidden_layers, low=0)
        check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_features), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_features
        self.features = nn.Sequential(*layers)
        self.classifier = MultiHeadClassifier(width, initial_out_features, pad_value=pad_value)

    def adaptation(self, experience: Any) -> None:
        """Record the task labels and adapt the classifier. Idempotent, so the classifier's own call by the
        template (which adapts every module) changes nothing more; calling this alone is enough too."""
        super().adaptation(experience)
        self.classifier.adaptation(experience)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Head ``task_label`` on the body's output."""
        return self.classifier.forward_single_task(self.features(x), task_label)

    def forward(self, x: Tensor, task_labels: Tensor | int | None) -> Any:
        """The body on the whole batch, then the classifier's routing (see :meth:`MultiTaskModule.forward`)."""
        return self.classifier(self.features(x), task_labels)
