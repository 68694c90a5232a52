"""The protocol of van de Ven & Tolias (2019), "Three scenarios for continual learning", as ``clfast reproduce
three-scenarios`` runs it: the model and training budget of each setting, the methods with the authors'
hyper-parameters (converted to the plugins' definitions), and one run (setting, method, seed) -> the final
average accuracy.

The protocol (Split-MNIST, as the paper and the authors' code of 2019 run it): an MLP 784-400-400-out with ReLU
(``task``: a 2-unit head per task; ``domain``: 2 outputs; ``class``: 10 outputs of which only the classes seen so
far are active in training), Adam (lr 1e-3, betas 0.9/0.999, never reset), 2000 iterations of 128 samples per
task (reshuffled passes, incomplete batches dropped), inputs in [0, 1], the digits relabelled per seed
(:func:`clfast.scenarios.authors_digit_order`), and after the last task the test accuracy of each task averaged
over the five. EWC's and Online EWC's Fisher is the per-sample estimate at the predicted label over all
training samples of the task (``EWCPlugin(fisher="sample")``); SI's Ω is unclipped with ξ = 0.1.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..evaluation import AccuracyMatrix, EvaluationPlugin
from ..models import SimpleMLP
from ..nn import MultiHeadMLP
from ..plugins import EWCPlugin, ReplayPlugin, SynapticIntelligencePlugin
from ..plugins.registry import PLUGINS
from ..scenarios import authors_digit_order, three_scenarios_split_digits, three_scenarios_split_mnist
from ..strategies import Naive
from ..training.utils import task_aware_forward

SETTINGS = ("task", "domain", "class")
#: The methods of the paper's comparison, then clfast's extras ("replay+X": replay and the regulariser X).
PAPER_METHODS = ("none", "ewc", "online-ewc", "si")
REGULARIZERS = ("ewc", "online-ewc", "si", "mas", "rwalk")
EXTRA_METHODS = ("mas", "rwalk", "replay", *(f"replay+{r}" for r in REGULARIZERS))
METHOD_NAMES = {"none": "None", "ewc": "EWC", "online-ewc": "Online EWC", "si": "SI", "mas": "MAS", "rwalk": "RWalk",
                "replay": "Replay"}
BENCHMARKS = {"split-mnist": three_scenarios_split_mnist, "split-digits": three_scenarios_split_digits}

#: The fixed part of the protocol (``results.json``'s "protocol" adds the run's options).
PROTOCOL: dict[str, Any] = {
    "hidden_layers": [400, 400], "activation": "relu", "optimizer": "adam", "lr": 1e-3, "betas": [0.9, 0.999],
    "optimizer_reset_per_task": False, "batch_size": 128, "incomplete_batches": "dropped",
    "inputs": "[0, 1], not normalised", "task_outputs": "a 2-unit head per task (MultiHeadMLP)",
    "domain_outputs": 2, "class_outputs": 10, "evaluation": "after the last task: the mean over the tasks of the "
    "test accuracy on each", "fisher": "per-sample gradients of the log-likelihood, all training samples of the task",
}
#: Replay's memory (the authors' later experience-replay budget, 100 per class, as one reservoir).
REPLAY_MEMORY = 1000

#: The authors' hyper-parameters in their own definitions: EWC's loss (λ/2)·Σ_k F_k⊙(θ−θ*_k)², Online EWC's
#: (λ/2)·γ·F̃⊙(θ−θ*)² with F̃ ← γF̃ + F, SI's c·Σ Ω⊙(θ−θ*)² with Ω = Σ ω/(Δθ² + ε). "paper": the values of
#: GMvandeVen/continual-learning's param_values.py in the paper's code (2019: EWC's λ, Online EWC's λ and γ, SI's
#: c; ε = 0.1 throughout); "current": that file today, tuned for its Fisher over all labels (it tunes EWC only in its
#: separate form; for Online EWC it is EWC's λ with γ = 1, the code's default).
HPARAMS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "paper": {
        "task": {"ewc": {"lambda": 1e7}, "online-ewc": {"lambda": 1e8, "gamma": 0.8},
                 "si": {"c": 50.0, "epsilon": 0.1}},
        "domain": {"ewc": {"lambda": 1e6}, "online-ewc": {"lambda": 1e8, "gamma": 0.7},
                   "si": {"c": 500.0, "epsilon": 0.1}},
        "class": {"ewc": {"lambda": 1e8}, "online-ewc": {"lambda": 1e9, "gamma": 0.8},
                  "si": {"c": 0.5, "epsilon": 0.1}},
    },
    "current": {
        "task": {"ewc": {"lambda": 1e5}, "online-ewc": {"lambda": 1e5, "gamma": 1.0},
                 "si": {"c": 10.0, "epsilon": 0.1}},
        "domain": {"ewc": {"lambda": 1e10}, "online-ewc": {"lambda": 1e10, "gamma": 1.0},
                   "si": {"c": 5e4, "epsilon": 0.1}},
        "class": {"ewc": {"lambda": 1e9}, "online-ewc": {"lambda": 1e9, "gamma": 1.0},
                  "si": {"c": 5e3, "epsilon": 0.1}},
    },
}
#: What else each hyper-parameter set's code did: the Fisher's labels and the active classes of class-IL.
HPARAM_DEFAULTS = {"paper": {"fisher_labels": "pred", "active_classes": "so-far"},
                   "current": {"fisher_labels": "all", "active_classes": "all"}}
ACTIVE_CLASSES = ("so-far", "all")


@dataclass(frozen=True)
class Options:
    """What a run takes beyond (setting, method, seed): the options of ``clfast reproduce three-scenarios``."""

    iterations: int = 2000
    hparams: str = "paper"
    fisher_labels: str = "pred"
    fisher_samples: int | None = None
    active_classes: str = "so-far"
    benchmark: str = "split-mnist"
    device: str = "cpu"
    strengths: Mapping[str, float] | None = None  # method -> its main strength (λ or c, the authors' units)


def method_name(method: str) -> str:
    """The printed name: "Online EWC", "Replay+SI", ..."""
    return "+".join(METHOD_NAMES[part] for part in method.split("+"))


def check_method(method: str) -> str:
    """``method`` if it names a method (ValueError otherwise)."""
    if method not in PAPER_METHODS + EXTRA_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(PAPER_METHODS + EXTRA_METHODS)}")
    return method


def method_config(method: str, setting: str, options: Options) -> list[dict[str, Any]]:
    """The plugins of ``method`` in ``setting``: per plugin its class name and keywords, and for the paper's methods
    the authors' values they come from (``"authors"``). The conversions: EWC ``ewc_lambda`` = λ/2; Online EWC
    ``ewc_lambda`` = λγ/2 with ``decay_factor`` = γ (the authors apply γ once more in the penalty); SI
    ``si_lambda`` = 2c (clfast's loss is (λ/2)·Σ Ω⊙(θ−θ*)²), ``eps`` = ε, ``clip=None``."""
    check_method(method)
    out: list[dict[str, Any]] = []
    for part in method.split("+"):
        if part == "none":
            continue
        if part == "replay":
            out.append({"plugin": "ReplayPlugin", "mem_size": REPLAY_MEMORY, "storage_policy": "reservoir",
                        "batch_size_mem": PROTOCOL["batch_size"]})
            continue
        strength = (options.strengths or {}).get(part)
        if part in ("mas", "rwalk"):  # clfast's own definitions and defaults, not tuned for this protocol
            spec = PLUGINS[part]
            out.append({"plugin": spec.cls.__name__, **spec.defaults,
                        spec.strength: spec.default_strength if strength is None else strength})
            continue
        authors = dict(HPARAMS[options.hparams][setting][part])
        if strength is not None:
            authors["lambda" if "lambda" in authors else "c"] = strength
        fisher = {"fisher": "sample", "fisher_labels": options.fisher_labels, "fisher_samples": options.fisher_samples}
        if part == "ewc":
            out.append({"plugin": "EWCPlugin", "ewc_lambda": authors["lambda"] / 2, "mode": "separate", **fisher,
                        "authors": authors})
        elif part == "online-ewc":
            out.append({"plugin": "EWCPlugin", "ewc_lambda": authors["lambda"] * authors["gamma"] / 2,
                        "mode": "online", "decay_factor": authors["gamma"], **fisher, "authors": authors})
        else:
            out.append({"plugin": "SynapticIntelligencePlugin", "si_lambda": 2 * authors["c"],
                        "eps": authors["epsilon"], "clip": None, "authors": authors})
    return out


_PLUGIN_CLASSES = {"EWCPlugin": EWCPlugin, "SynapticIntelligencePlugin": SynapticIntelligencePlugin,
                   "ReplayPlugin": ReplayPlugin, **{s.cls.__name__: s.cls for s in PLUGINS.values()}}


def build_plugins(method: str, setting: str, options: Options, seed: int) -> list[Any]:
    """The plugins of :func:`method_config`, replay first (the regularisers then see the replayed samples)."""
    plugins = []
    for cfg in method_config(method, setting, options):
        kwargs = {k: v for k, v in cfg.items() if k not in ("plugin", "authors")}
        if cfg["plugin"] == "ReplayPlugin":
            kwargs["seed"] = seed
        plugins.append(_PLUGIN_CLASSES[cfg["plugin"]](**kwargs))
    return plugins


class ActiveClasses(nn.Module):
    """The paper's class-incremental output layer: only the units of the classes seen in training so far take
    part, the others are cut off the output (the authors' "active classes"; all of them before any training).
    Assumes the classes arrive in the order of their ids, as the three-scenarios benchmarks give them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_seen = 0

    def adaptation(self, experience: Any) -> None:
        """In training mode, widen to the experience's classes (evaluation never changes what is active)."""
        if self.training:
            self.n_seen = max(self.n_seen, max(experience.classes_in_this_experience) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[:, :self.n_seen] if self.n_seen else out


def build_model(setting: str, input_shape: tuple[int, ...], n_outputs: int, active_classes: str) -> nn.Module:
    """The MLP of the protocol for ``setting`` (a head per task for ``"task"``)."""
    hidden = PROTOCOL["hidden_layers"]
    if setting == "task":
        return MultiHeadMLP(math.prod(input_shape), hidden[0], len(hidden), initial_out_features=n_outputs)
    model = SimpleMLP(input_shape, n_outputs, hidden_size=hidden[0], hidden_layers=len(hidden))
    return ActiveClasses(model) if setting == "class" and active_classes == "so-far" else model


class TensorBatches:
    """An experience's samples gathered into tensors on the device once; each pass over it is a fresh shuffle
    (torch's global generator) cut into full batches (the authors' loader drops the incomplete one; a dataset
    smaller than a batch is one batch). One index gather per batch, nothing through the host per batch."""

    def __init__(self, dataset: Any, batch_size: int, device: torch.device) -> None:
        rows = dataset.collate_fn(dataset.__getitems__(list(range(len(dataset)))))
        self.tensors = [t.to(device) for t in rows]
        self.batch_size = batch_size
        self.n = len(dataset)

    def __len__(self) -> int:
        return max(1, self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        order = torch.randperm(self.n).to(self.tensors[0].device)
        size = min(self.batch_size, self.n)
        for i in range(len(self)):
            rows = order[i * size:(i + 1) * size]
            yield [t.index_select(0, rows) for t in self.tensors]


class ProtocolNaive(Naive):
    """Naive with the protocol's training batches (:class:`TensorBatches`) instead of a DataLoader; the plugins'
    passes and the evaluation keep theirs."""

    def make_train_dataloader(self, **kwargs: Any) -> None:
        self.dataloader = TensorBatches(self.adapted_dataset, self.train_mb_size, self.device)

    def forward(self) -> Any:
        # The template's forward asks the experience for its task labels first, a torch.unique over the whole
        # experience per iteration; these batches always carry the task labels.
        if not self.is_training:
            return super().forward()
        return task_aware_forward(self.model, self.mb_x, self.mb_task_id)


def build_run(setting: str, method: str, seed: int, options: Options) -> tuple[Any, ProtocolNaive, EvaluationPlugin]:
    """Seeds the generators with ``seed``, then builds the benchmark (the digit order of ``seed``), the model, the
    optimizer, the plugins and the strategy; returns (benchmark, strategy, its evaluator)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    bench = BENCHMARKS[options.benchmark](setting, digit_order=authors_digit_order(seed))
    input_shape = tuple(bench.train_stream[0].dataset[0][0].shape)
    model = build_model(setting, input_shape, bench.n_outputs, options.active_classes)
    # foreach: torch's multi-tensor Adam, the same updates as its CPU default (one tensor at a time) in about a
    # third of the time for this MLP (a step costs as much as a forward without it).
    optimizer = torch.optim.Adam(model.parameters(), lr=PROTOCOL["lr"], betas=tuple(PROTOCOL["betas"]), foreach=True)
    evaluator = EvaluationPlugin(AccuracyMatrix())
    strategy = ProtocolNaive(model, optimizer, nn.CrossEntropyLoss(), train_mb_size=PROTOCOL["batch_size"],
                             train_iterations=options.iterations, eval_mb_size=1000, device=options.device,
                             plugins=build_plugins(method, setting, options, seed), evaluator=evaluator)
    return bench, strategy, evaluator


def run_one(setting: str, method: str, seed: int, options: Options) -> dict[str, Any]:
    """Trains ``method`` over the five tasks of ``setting`` (:func:`build_run`), then evaluates once; returns the
    average accuracy (%), the per-task accuracies (%), the training time (consolidation passes included) and the
    iteration count."""
    bench, strategy, evaluator = build_run(setting, method, seed, options)
    t0 = time.perf_counter()
    for exp in bench.train_stream:
        strategy.train(exp)
    train_s = time.perf_counter() - t0
    strategy.eval(bench.test_stream)
    per_task = [100 * a for a in evaluator.accuracy_matrix("test")[-1]]
    return {"setting": setting, "method": method, "seed": seed, "accuracy": sum(per_task) / len(per_task),
            "per_task": per_task, "train_s": train_s, "iterations": strategy.clock.train_iterations}
