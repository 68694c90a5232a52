"""Shared fixtures of the plugin tests: small models (MLP, CNN with BatchNorm, multi-head), streams, the
model/stream cases every regulariser is compared with Avalanche on, a minimal Avalanche-attribute-only
strategy, and a runner that trains a clfast plugin and its Avalanche transcription side by side on
identical copies of a model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin
from clfast.strategies import Naive
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.training import SupervisedTemplate

N_FEATURES = 10
N_CLASSES = 6


# ---------------------------------------------------------------------------------------------- models


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, N_CLASSES))


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2 (second strided), global average pool, Linear; input (1, 3, 3) from the first 9 features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(6, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x[:, :9].reshape(-1, 1, 3, 3)))


class MultiHead(nn.Module):
    """A shared trunk and one head per task, routed by the task labels (heads of absent tasks get no
    gradient), like Avalanche's ``MultiTaskModule``; outputs zero-padded to the widest head."""

    def __init__(self, n_tasks: int = 3, per_task: int = 2, bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(N_FEATURES, 12)]
        if bn:
            layers.append(nn.BatchNorm1d(12))
        self.trunk = nn.Sequential(*layers, nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(12, per_task) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        out = z.new_zeros(x.shape[0], max(h.out_features for h in self.heads))
        for t in torch.unique(task_labels).tolist():
            mask = task_labels == t
            o = self.heads[t](z[mask])
            out[mask, : o.shape[1]] = o
        return out


class GrowingHead(nn.Module):
    """A trunk and a classifier that grows to the classes seen (``adaptation``), like Avalanche's
    ``IncrementalClassifier``: old rows kept, new rows fresh."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(N_FEATURES, 12), nn.ReLU())
        self.classifier = nn.Linear(12, 2)

    def adaptation(self, experience: Any) -> None:
        n = max(max(experience.classes_in_this_experience) + 1, self.classifier.out_features)
        if n > self.classifier.out_features:
            old = self.classifier
            new = nn.Linear(12, n).to(old.weight.device)
            with torch.no_grad():
                new.weight[: old.out_features] = old.weight
                new.bias[: old.out_features] = old.bias
            self.classifier = new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


#: name -> (model factory, task-incremental stream): the cases the plugins are compared with Avalanche on.
MODEL_CASES: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "mlp-class": (mlp, False),
    "cnn_bn-class": (SmallCNN, False),
    "multihead-task": (MultiHead, True),
    "multihead_bn-task": (lambda: MultiHead(bn=True), True),
    "growing_head-class": (GrowingHead, False),
}


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


# ---------------------------------------------------------------------------------------------- streams


def stream(n_experiences: int = 3, n_per_exp: int = 20, task_incremental: bool = False, seed: int = 0,
           two_classes: bool = True) -> Stream:
    """Experience e holds classes {2e, 2e+1} (class-incremental) or classes {0, 1} of task e."""
    g = torch.Generator().manual_seed(seed)
    s = Stream("train")
    for e in range(n_experiences):
        local = torch.arange(n_per_exp) % 2
        y = local if task_incremental else local + 2 * e
        x = torch.randn(n_per_exp, N_FEATURES, generator=g) + 0.5 * (y.float() + e).unsqueeze(1)
        t = torch.full((n_per_exp,), e if task_incremental else 0)
        s.append(Experience(TensorExperienceDataset(x, y, t), e, s, task=e if task_incremental else 0))
    return s


# ---------------------------------------------------------------------------------------------- strategies


class ModeProbe:
    """Records ``model.training`` at every training ``before_forward``."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        self.modes.append(strategy.model.training)


class LossRecorder:
    """Records ``float(strategy.loss)`` after every training iteration (put it after the plugin)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.losses.append(float(strategy.loss.detach().sum()))


def naive(model: nn.Module, plugins: list[Any], lr: float = 0.1, momentum: float = 0.0, mb: int = 8,
          epochs: int = 2) -> Naive:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return Naive(model, opt, train_mb_size=mb, train_epochs=epochs, plugins=plugins, evaluator=EvaluationPlugin())


def train_stream(strategy: Any, experiences: Iterable[Any], seed: int = 0) -> None:
    """One ``train()`` call per experience, with the shuffling seeded per experience."""
    for exp in experiences:
        torch.manual_seed(seed + 101 * exp.current_experience)
        strategy.train(exp)


def trained(plugins: list[Any], factory: Callable[[], nn.Module] = mlp, experiences: Iterable[Any] = (),
            **naive_kw: Any) -> Naive:
    """:func:`naive` with ``plugins`` on a seeded ``factory()`` model, trained on ``experiences`` (one
    :func:`train_stream`; none by default)."""
    strategy = naive(seeded(factory), plugins, **naive_kw)
    train_stream(strategy, experiences)
    return strategy


def run_side_by_side(factory: Callable[[], nn.Module], ours: Any, ref: Any, experiences: Stream,
                     **naive_kw: Any) -> tuple[Naive, Naive, LossRecorder, LossRecorder]:
    """Train identical copies of a model with ``ours`` and with ``ref`` over the same stream."""
    model = seeded(factory)
    rec_a, rec_b = LossRecorder(), LossRecorder()
    sa = naive(model, [ours, rec_a], **naive_kw)
    sb = naive(copy.deepcopy(model), [ref, rec_b], **naive_kw)
    train_stream(sa, experiences)
    train_stream(sb, experiences)
    return sa, sb, rec_a, rec_b


def run_case(case: str, ours: Any, ref: Any, *, loss_rtol: float = 1e-4, model_rtol: float = 1e-4,
             model_atol: float = 1e-6, **naive_kw: Any) -> tuple[Naive, Naive]:
    """:func:`run_side_by_side` on the model and stream of ``MODEL_CASES[case]``; asserts that the recorded
    losses (``rtol=loss_rtol``) and the final models (parameters and buffers) agree."""
    factory, task_incremental = MODEL_CASES[case]
    sa, sb, ra, rb = run_side_by_side(factory, ours, ref, stream(task_incremental=task_incremental), **naive_kw)
    assert_losses_close(ra, rb, rtol=loss_rtol)
    assert_models_close(sa.model, sb.model, rtol=model_rtol, atol=model_atol)
    return sa, sb


def assert_dicts_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str,
                       rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert set(ours) == set(ref), f"{what}: names differ: {sorted(set(ours) ^ set(ref))}"
    for k in ref:
        a, b = ours[k].detach().double().cpu(), ref[k].detach().double().cpu().reshape(ours[k].shape)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what}[{k}]: {m}")


def assert_models_close(a: nn.Module, b: nn.Module, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert_dicts_close(dict(a.named_parameters()), dict(b.named_parameters()), "parameters", rtol, atol)
    assert_dicts_close(dict(a.named_buffers()), dict(b.named_buffers()), "buffers", rtol, atol)


def assert_losses_close(a: LossRecorder, b: LossRecorder, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert len(a.losses) == len(b.losses) > 0
    torch.testing.assert_close(torch.tensor(a.losses, dtype=torch.float64), torch.tensor(b.losses, dtype=torch.float64),
                               rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------- minimal strategy


class _Clock:
    __slots__ = (
        "total_iterations",
        "train_epoch_iterations",
        "train_exp_counter",
        "train_exp_epochs",
        "train_exp_iterations",
        "train_iterations",
    )

    def __init__(self) -> None:
        for f in self.__slots__:
            setattr(self, f, 0)


class MiniStrategy:
    """Avalanche's training loop (§1.4) reduced to the attributes of ``docs/plugin-api.md`` §4 and nothing
    else (``__slots__``: a plugin touching any other attribute fails). Plugins are called in list order,
    then the clock updates (it is last)."""

    __slots__ = (
        "_criterion",
        "_stop",
        "adapted_dataset",
        "clock",
        "current_eval_stream",
        "dataloader",
        "device",
        "eval_every",
        "eval_mb_size",
        "evaluator",
        "experience",
        "is_training",
        "loss",
        "mb_output",
        "mbatch",
        "model",
        "optimizer",
        "peval_mode",
        "plugins",
        "retain_graph",
        "train_epochs",
        "train_mb_size",
    )

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plugins: list[Any], mb: int = 8,
                 epochs: int = 2) -> None:
        self.model, self.optimizer, self._criterion = model, optimizer, nn.CrossEntropyLoss()
        self.plugins, self.train_mb_size, self.eval_mb_size, self.train_epochs = list(plugins), mb, mb, epochs
        self.device = torch.device("cpu")
        self.clock, self.retain_graph, self.eval_every, self.peval_mode = _Clock(), False, -1, "epoch"
        self.evaluator, self.is_training, self.current_eval_stream = None, False, None
        self.loss, self.mbatch, self.mb_output, self.experience = torch.zeros(1), None, None, None
        self.adapted_dataset, self.dataloader, self._stop = None, None, False

    @property
    def is_eval(self) -> bool:
        return not self.is_training

    # The template's own minibatch views: they read nothing but ``mbatch``.
    mb_x = SupervisedTemplate.mb_x
    mb_y = SupervisedTemplate.mb_y
    mb_task_id = SupervisedTemplate.mb_task_id

    def stop_training(self) -> None:
        self._stop = True

    def _call(self, hook: str) -> None:
        for p in self.plugins:
            fn = getattr(p, hook, None)
            if fn is not None:
                fn(self)

    def train(self, exp: Any) -> None:
        c = self.clock
        self.is_training = True
        self.model.train()
        self._call("before_training")
        self.experience = exp
        self._call("before_train_dataset_adaptation")
        self.adapted_dataset = exp.dataset
        self._call("after_train_dataset_adaptation")
        self.dataloader = torch.utils.data.DataLoader(exp.dataset, batch_size=self.train_mb_size, shuffle=True)
        self._call("before_training_exp")
        c.train_exp_epochs = c.train_exp_iterations = 0
        for _ in range(self.train_epochs):
            self._call("before_training_epoch")
            c.train_epoch_iterations = 0
            for mbatch in self.dataloader:
                self.mbatch = list(mbatch)
                self._call("before_training_iteration")
                self.optimizer.zero_grad()
                self.loss = torch.zeros(1)
                self._call("before_forward")
                multi = "task_labels" in type(self.model).forward.__code__.co_varnames
                self.mb_output = self.model(self.mb_x, self.mb_task_id) if multi else self.model(self.mb_x)
                self._call("after_forward")
                self.loss += self._criterion(self.mb_output, self.mb_y)
                self._call("before_backward")
                self.loss.backward()
                self._call("after_backward")
                self._call("before_update")
                self.optimizer.step()
                self._call("after_update")
                self._call("after_training_iteration")
                c.train_iterations += 1
                c.train_exp_iterations += 1
                c.train_epoch_iterations += 1
                c.total_iterations += 1
            self._call("after_training_epoch")
            c.train_exp_epochs += 1
        self._call("after_training_exp")
        c.train_exp_counter += 1
        self._call("after_training")
        self.experience = None
