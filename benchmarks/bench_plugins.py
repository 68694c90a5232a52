"""Benchmark of the regularisation plugins: time per training iteration over ``Naive``'s.

For each model, every contender trains the same model (same initial weights) on the same synthetic
class-incremental stream of two experiences (classes 0-4, then 5-9; random tensors, nothing downloaded) in
``clfast.strategies.Naive`` (plain SGD by default, a shuffled ``DataLoader`` built by the template, an evaluator
without metrics). Contenders: Naive alone; clfast's ``MASPlugin``, ``EWCPlugin`` (online, decay 0.9),
``SynapticIntelligencePlugin`` and ``RWalkPlugin`` (issue defaults); and the Avalanche-style eager versions of
the same four from ``clfast.testing.avalanche`` (Python loops over parameters, as Avalanche; RWalk with its
extra eval-mode pass, SI with Avalanche's CPU state, including the CPU aliasing that skips the host copies on
a CPU model, as the real Avalanche does there).

What is timed: iterations of the **second** experience, after the first experience's training (10 iterations,
so RWalk has scored one Δt window) and its importance pass, since the penalties start there. An iteration runs
from fetching the minibatch to the end of ``after_training_iteration`` (every hook, forward, backward, step;
CUDA synchronised). The contenders run in threads that take turns one iteration at a time (only one runs at
any moment), so drift on a shared machine hits all of them alike; the median over the timed iterations
(after a few warm-up ones) is reported, with its ratio over Naive's and the issue's targets.

Models: ``mlp`` 3072-2000-2000-10 (10.2M parameters); ``cnn`` six conv3×3-BN-ReLU blocks (3→32, 32→64 s2,
64→64, 64→128 s2, 128→128, 128→256 s2), global average pool, Linear 256→10 (0.58M); ``resnet18`` /
``resnet50``: plain BasicBlock [2,2,2,2] / Bottleneck [3,4,6,3] ResNets with the ImageNet stem (7×7 s2 conv,
3×3 s2 max-pool) and a 10-way head (11.2M / 23.5M), on ``--image-size`` inputs (64 by default). The MLP and
the CNN take 3×32×32 inputs. Batch 32 on CPU, 64 on CUDA.

Writes ``benchmarks/results/plugins_<device>.{json,md}`` (``--out``).

Usage: ``python benchmarks/bench_plugins.py [--quick] [--device cpu|cuda] [--models mlp,cnn,resnet18,resnet50]``
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import clfast
import clfast.optim
from clfast.plugins import PLUGINS as REGISTRY
from clfast.strategies import Naive
from clfast.testing.avalanche import AvalancheEWC, AvalancheMAS, AvalancheRWalk, AvalancheSI
from clfast.testing.bench import device_name, sync
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.training.precision import PRECISIONS

HERE = Path(__file__).resolve().parent
PLUGINS = tuple(REGISTRY)  # clfast's regularisers (``clfast.plugins.PLUGINS``), by command-line name
MODEL_NAMES = ("mlp", "cnn", "resnet18", "resnet50")

#: The issue's targets (time per iteration over Naive's): the MLP and CNN on CPU, the ResNet-50 on the H100.
TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("cpu", "mlp"): {"mas": 1.8, "ewc": 1.8, "si": 2.8, "rwalk": 3.5},
    ("cpu", "cnn"): {"mas": 1.05, "ewc": 1.05, "si": 1.05, "rwalk": 1.15},
    ("cuda", "resnet50"): {"mas": 1.05, "ewc": 1.05, "si": 1.15, "rwalk": 1.15},
}
#: The targets with clfast.optim.SGD (momentum 0.9) as the plugins' optimizer, over Naive with torch's SGD.
TARGETS_OPTIM: dict[tuple[str, str], dict[str, float]] = {("cpu", "mlp"): {"mas": 1.15, "ewc": 1.15, "si": 1.4,
                                                                         "rwalk": 1.6}}
#: The optimizers a contender may train with (``--optimizer``): Naive always has torch's.
OPTIMIZERS = {"torch": torch.optim.SGD, "clfast": clfast.optim.SGD}
#: What the issue measured with the real Avalanche 0.6.0 on the project's 2-core CPU (batch 32).
AVALANCHE_060_CPU: dict[str, dict[str, float]] = {
    "mlp": {"mas": 3.3, "ewc": 3.1, "si": 3.7, "rwalk": 8.8},
    "cnn": {"mas": 0.96, "ewc": 1.06, "si": 1.06, "rwalk": 2.0},
}
#: Constructor keywords of both implementations, on top of the registry's defaults (a plugin missing here runs
#: with the registry's defaults, strength included).
HPARAMS = {"mas": {"lambda_reg": 1.0, "alpha": 0.5}, "ewc": {"ewc_lambda": 1.0, "mode": "online", "decay_factor": 0.9},
           "si": {"si_lambda": 1.0}, "rwalk": {"ewc_lambda": 0.1, "ewc_alpha": 0.9, "delta_t": 10}}
#: The Avalanche-style peers (``clfast.testing.avalanche``) of the registry's plugins.
AVALANCHE: dict[str, Callable[..., Any]] = {"mas": AvalancheMAS, "ewc": AvalancheEWC, "rwalk": AvalancheRWalk,
                                            "si": functools.partial(AvalancheSI, si_alias_defect=True)}


# ---------------------------------------------------------------------------------------------------- models


def mlp(hidden: int = 2000, in_features: int = 3 * 32 * 32, classes: int = 10) -> nn.Module:
    """The issue's MLP: 3072-2000-2000-10 (``hidden`` scales it down for smoke runs)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def cnn(classes: int = 10) -> nn.Module:
    """The issue's CNN: six conv3×3-BN-ReLU blocks, global average pool, Linear 256→10."""
    spec = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2)]
    layers = [m for cin, cout, s in spec for m in conv_bn(cin, cout, 3, s)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, classes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(*conv_bn(cin, width, 3, stride), nn.Conv2d(width, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.body = nn.Sequential(*conv_bn(cin, width, 1), *conv_bn(width, width, 3, stride),
                                  nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def resnet(block: type[BasicBlock], depths: list[int], classes: int = 10) -> nn.Module:
    """A plain ResNet with the ImageNet stem (torchvision's layout, built here)."""
    layers: list[nn.Module] = [*conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (width, n) in enumerate(zip([64, 128, 256, 512], depths, strict=True)):
        for i in range(n):
            layers.append(block(cin, width, 2 if (i == 0 and stage > 0) else 1))
            cin = width * block.expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def build_model(name: str, args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...]]:
    """The model and its input shape (without the batch dimension)."""
    if name == "mlp":
        return mlp(args.mlp_hidden), (3, 32, 32)
    if name == "cnn":
        return cnn(), (3, 32, 32)
    size = (3, args.image_size, args.image_size)
    if name == "resnet18":
        return resnet(BasicBlock, [2, 2, 2, 2]), size
    if name == "resnet50":
        return resnet(Bottleneck, [3, 4, 6, 3]), size
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")


# ---------------------------------------------------------------------------------------------------- data


def make_stream(input_shape: tuple[int, ...], batch: int, iters: tuple[int, int], seed: int = 0) -> Stream:
    """Two class-incremental experiences (classes 0-4, 5-9) of ``iters[e] * batch`` random samples each."""
    g = torch.Generator().manual_seed(seed)
    stream = Stream("train")
    for e, n_iters in enumerate(iters):
        n = n_iters * batch
        x = torch.randn(n, *input_shape, generator=g)
        y = torch.randint(0, 5, (n,), generator=g) + 5 * e
        stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), e, stream))
    return stream


# ---------------------------------------------------------------------------------------------------- contenders


def contenders(plugins: list[str], implementations: list[str],
               optimizers: tuple[str, ...] = ("torch",)) -> dict[str, Callable[[], Any] | str | None]:
    """label -> factory of the plugin (None for Naive), or a string saying why it is missing. A label
    ``clfast+optim/<plugin>`` (and ``naive+optim``) trains with clfast.optim.SGD instead of torch's."""
    out: dict[str, Callable[[], Any] | str | None] = {"naive": None}
    if "clfast" in optimizers:
        out["naive+optim/-"] = None
    for p in plugins:
        hparams = HPARAMS.get(p, {})
        if "clfast" in implementations:
            for optimizer in optimizers:
                label = f"clfast/{p}" if optimizer == "torch" else f"clfast+optim/{p}"
                out[label] = lambda spec=REGISTRY[p], kw=hparams: spec.make(**kw)
        if "avalanche" in implementations:
            out[f"avalanche/{p}"] = (lambda make=AVALANCHE[p], kw=hparams: make(**kw)) if p in AVALANCHE else \
                f"no Avalanche-style transcription of {p} in clfast.testing.avalanche"
    return out


# ---------------------------------------------------------------------------------------------------- interleaving


class _DoneTimingError(Exception):
    """Raised by the timer after the last timed iteration: ends the contender's run."""


class RoundRobin:
    """Lets several threads run one at a time, each handing the turn to the next in a cycle."""

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self._active = list(range(n))
        self._turn = 0

    def wait(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == i)

    def _advance(self, i: int) -> None:
        later = [j for j in self._active if j > i]
        self._turn = later[0] if later else (self._active[0] if self._active else -1)

    def pass_turn(self, i: int) -> None:
        """Gives the turn to the next thread and blocks until it comes back."""
        with self._cond:
            self._advance(i)
            self._cond.notify_all()
        self.wait(i)

    def finish(self, i: int) -> None:
        with self._cond:
            self._active.remove(i)
            if self._turn == i:
                self._advance(i)
            self._cond.notify_all()


class _TimedLoader:
    """Wraps the dataloader: the clock of an iteration starts when its minibatch is fetched."""

    def __init__(self, loader: Any, timer: IterationTimer) -> None:
        self.loader, self.timer = loader, timer

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.timer.t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch


class IterationTimer:
    """A plugin (the last user plugin) that times the iterations of the second experience."""

    def __init__(self, rr: RoundRobin, index: int, n_iters: int, device: str) -> None:
        self.rr, self.index, self.n_iters, self.device = rr, index, n_iters, device
        self.armed = False
        self.t0 = 0.0
        self.times: list[float] = []

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.armed:
            strategy.dataloader = _TimedLoader(strategy.dataloader, self)

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if not self.armed:
            return
        sync(self.device)
        self.times.append(time.perf_counter() - self.t0)
        if len(self.times) >= self.n_iters:
            raise _DoneTimingError
        self.rr.pass_turn(self.index)


def run_contender(label: str, factory: Callable[[], Any] | None, model_name: str, args: argparse.Namespace,
                  stream: Stream, rr: RoundRobin, index: int, out: dict[str, Any]) -> None:
    """One contender, in its own thread: exp 1 (untimed), then the timed iterations of exp 2."""
    rr.wait(index)
    try:
        torch.manual_seed(args.seed)
        model, _ = build_model(model_name, args)
        model = model.to(args.device)
        timer = IterationTimer(rr, index, args.warmup + args.reps, args.device)
        plugins = ([] if factory is None else [factory()]) + [timer]
        optimizer = OPTIMIZERS["clfast" if "+optim" in label else "torch"]
        strategy = Naive(model, optimizer(model.parameters(), lr=0.01, momentum=args.momentum),
                         train_mb_size=args.batch, device=args.device, plugins=plugins, evaluator=None,
                         precision=args.precision)
        strategy.train(stream[0])
        timer.armed = True
        try:
            strategy.train(stream[1])
        except _DoneTimingError:
            pass
        times = timer.times[args.warmup:]
        out[label] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                      "iters": len(times), "loss": float(strategy.loss.detach().sum())}
    except Exception as exc:  # a work-in-progress plugin must not stop the others
        out[label] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    finally:
        rr.finish(index)


def bench_model(model_name: str, args: argparse.Namespace, todo: dict[str, Any]) -> list[dict]:
    model, input_shape = build_model(model_name, args)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    stream = make_stream(input_shape, args.batch, (args.exp1_iters, args.warmup + args.reps), args.seed)
    runnable = {k: v for k, v in todo.items() if not isinstance(v, str)}
    rr = RoundRobin(len(runnable))
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=run_contender, args=(label, factory, model_name, args, stream, rr, i, results),
                                name=label) for i, (label, factory) in enumerate(runnable.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    naive = results.get("naive", {}).get("median_ms")
    rows = []
    for label, what in todo.items():
        impl, _, plugin = label.partition("/")
        plugin = "" if plugin == "-" else plugin
        row: dict[str, Any] = {"model": model_name, "params": n_params, "batch": args.batch, "reps": args.reps,
                               "input": list(input_shape), "implementation": impl, "plugin": plugin or "-"}
        if isinstance(what, str):
            row["missing"] = what
        else:
            row.update(results[label])
        if "median_ms" in row and naive:
            row["ratio"] = row["median_ms"] / naive
            row["ratio_of_min"] = row["min_ms"] / results["naive"]["min_ms"]
        if impl == "clfast+optim":
            targets = TARGETS_OPTIM.get((args.device, model_name), {})
        else:
            targets = TARGETS.get((args.device, model_name), {})
        if plugin in targets:
            row["target"] = targets[plugin]
            if impl.startswith("clfast") and "ratio" in row:
                row["met"] = row["ratio"] <= targets[plugin]
        if args.device == "cpu" and impl == "avalanche" and plugin in AVALANCHE_060_CPU.get(model_name, {}):
            row["avalanche_0.6.0_issue"] = AVALANCHE_060_CPU[model_name][plugin]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- report


def _fmt(row: dict | None, key: str, fmt: str) -> str:
    if row is None:
        return "–"
    if "missing" in row:
        return "missing"
    if "error" in row:
        return "error"
    return format(row[key], fmt) if key in row else "–"


def to_markdown(result: dict) -> str:
    lines = [f"# Plugins: time per training iteration over Naive's — {result['device_name']}", "",
             f"torch {result['torch']}, clfast {result['clfast']}, {result['date']}. Second experience of a "
             f"2-experience class-incremental synthetic stream, batch {result['batch']}, "
             f"SGD(lr 0.01, momentum {result['momentum']}), precision {result.get('precision', '32')} (every "
             "contender, Naive included); the clfast.optim columns train the plugin with "
             "clfast.optim.SGD (the penalty inside the step), still over Naive with torch's SGD; "
             f"median of the timed iterations (interleaved, per model below) after {result['warmup']} warm-up ones. "
             "`avalanche-style` = the eager transcriptions of `clfast.testing.avalanche` (RWalk with its extra "
             "eval-mode pass; SI with Avalanche's CPU aliasing, i.e. no host copies on a CPU model, as the real "
             "library); `Avalanche 0.6.0` = the real library's ratio as measured in the issue (CPU only). "
             "EWC in online mode. `met` compares the median ratio with the target; `× of min` = fastest iteration over "
             "Naive's fastest (less sensitive to other load on a shared machine).", ""]
    by_key = {(r["model"], r["implementation"], r["plugin"]): r for r in result["rows"]}
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        naive = by_key.get((model, "naive", "-"))
        params = next(r["params"] for r in result["rows"] if r["model"] == model)
        lines += [f"## {model} ({params / 1e6:.2f}M parameters, input {'×'.join(map(str, naive['input']))}): "
                  f"Naive {_fmt(naive, 'median_ms', '.2f')} ms/iteration, median of {naive['reps']}", "",
                  *([] if (model, "naive+optim", "-") not in by_key else [
                      f"Naive with clfast.optim.SGD: {_fmt(by_key[(model, 'naive+optim', '-')], 'median_ms', '.2f')} "
                      f"ms ({_fmt(by_key[(model, 'naive+optim', '-')], 'ratio', '.2f')}× torch's).", ""]),
                  "| plugin | target | clfast ms | clfast × | met | clfast × of min | avalanche-style ms "
                  "| avalanche-style × | Avalanche 0.6.0 × | with clfast.optim: target | ms | × | met |",
                  "|---|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for p in result["plugins"]:
            c, a = by_key.get((model, "clfast", p)), by_key.get((model, "avalanche", p))
            f = by_key.get((model, "clfast+optim", p))
            f_target = "–" if f is None or "target" not in f else f"≤ {f['target']:.2f}"
            f_met = "–" if f is None or "met" not in f else ("yes" if f["met"] else "**no**")
            target = (c or a or {}).get("target")
            met = "–" if c is None or "met" not in c else ("yes" if c["met"] else "**no**")
            real = (a or {}).get("avalanche_0.6.0_issue")
            target_s = f"≤ {target:.2f}" if target else "–"
            real_s = "–" if real is None else f"{real}"
            lines.append(f"| {p} | {target_s} | {_fmt(c, 'median_ms', '.2f')} | {_fmt(c, 'ratio', '.2f')} | {met} | "
                         f"{_fmt(c, 'ratio_of_min', '.2f')} | {_fmt(a, 'median_ms', '.2f')} | "
                         f"{_fmt(a, 'ratio', '.2f')} | {real_s} | {f_target} | {_fmt(f, 'median_ms', '.2f')} | "
                         f"{_fmt(f, 'ratio', '.2f')} | {f_met} |")
        lines.append("")
    notes = sorted({f"{r['implementation']}/{r['plugin']}: {r.get('missing') or r.get('error')}"
                    for r in result["rows"] if "missing" in r or "error" in r})
    if notes:
        lines += ["Not measured:", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=None, help=f"comma list from {','.join(MODEL_NAMES)} "
                    "(default: mlp,cnn,resnet18 on CPU, all four on CUDA)")
    ap.add_argument("--plugins", default=",".join(PLUGINS))
    ap.add_argument("--implementations", default="clfast,avalanche")
    ap.add_argument("--optimizer", default="torch", choices=("torch", "clfast", "both"),
                    help="the clfast plugins' optimizer: torch.optim.SGD, clfast.optim.SGD (the penalty fused into "
                         "the step), or both; Naive's is torch's either way")
    ap.add_argument("--quick", action="store_true", help="fewer timed iterations")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed iterations per contender (default 25, 15 for the ResNets; 8 with --quick)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--exp1-iters", type=int, default=10, help="iterations of the first experience (RWalk's Δt = 10)")
    ap.add_argument("--batch", type=int, default=None, help="minibatch size (default 32 on CPU, 64 on CUDA)")
    ap.add_argument("--mlp-hidden", type=int, default=2000, help="the MLP's hidden width (smaller for smoke runs)")
    ap.add_argument("--image-size", type=int, default=64, help="input side of the ResNets")
    ap.add_argument("--momentum", type=float, default=0.0,
                    help="SGD momentum (lr 0.01); plain SGD by default: the cheapest Naive step, the strictest ratios")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="32", choices=PRECISIONS,
                    help="the strategies' precision (every contender, Naive included, in the same one)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    args.batch = args.batch or (64 if args.device == "cuda" else 32)
    reps_arg = args.reps
    models = (args.models or ("mlp,cnn,resnet18" if args.device == "cpu" else ",".join(MODEL_NAMES))).split(",")
    plugins = [p for p in args.plugins.split(",") if p]
    optimizers = ("torch", "clfast") if args.optimizer == "both" else (args.optimizer,)
    todo = contenders(plugins, args.implementations.split(","), optimizers)

    rows = []
    for name in models:
        args.reps = reps_arg or (8 if args.quick else 15 if name.startswith("resnet") else 25)
        print(f"[bench] {name}: {len(todo)} contenders, {args.warmup}+{args.reps} iterations each", flush=True)
        rows += bench_model(name, args, todo)
    result = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "clfast": clfast.__version__, "date": time.strftime("%Y-%m-%d"), "batch": args.batch,
              "momentum": args.momentum, "optimizer": args.optimizer, "precision": args.precision,
              "warmup": args.warmup,
              "exp1_iters": args.exp1_iters, "plugins": plugins,
              "hparams": HPARAMS, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.device}-{torch.get_num_threads()}threads" if args.device == "cpu" else \
        torch.cuda.get_device_name().replace(" ", "_")
    if args.precision != "32":
        tag += f"-{args.precision}"
    (out / f"plugins_{tag}.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (out / f"plugins_{tag}.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
