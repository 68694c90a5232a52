"""LatentReplayPlugin with Naive and the regularisers: the frozen lower part, stored labels against labels recomputed
from the samples' own latents, preallocation, replayed rows in the loss's gradient (against a hand-written
forward), each policy's per-class counts against hand-computed ones (reservoir: against a plain-Python algorithm
R fed the same draws), EWC, SI, MAS and RWalk on top, mixed precision and accumulation, checkpoints, a growing
head, the CUDA device, and bad arguments."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin
from clfast.plugins import (
    AR1Buffer,
    EWCPlugin,
    LatentReplayPlugin,
    MASPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
)
from clfast.strategies import Naive
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.testing.plugin_fixtures import GrowingHead, LossRecorder, MultiHead
from clfast.testing.resnet import resnet18
from clfast.training import checkpoint as ck

N_FEATURES = 6
N_CLASSES = 6


def make_stream(sizes=(20, 20, 20), n_features: int = N_FEATURES, image: bool = False, seed: int = 0) -> Stream:
    """Experience e holds classes {2e, 2e+1}, alternating by index; inputs are noise shifted by the class, so that
    every sample's latent is distinct."""
    g = torch.Generator().manual_seed(seed)
    stream = Stream("train")
    for e, n in enumerate(sizes):
        y = torch.arange(n) % 2 + 2 * e
        shape = (n, 3, 16, 16) if image else (n, n_features)
        x = torch.randn(shape, generator=g) + 0.3 * y.float().reshape(-1, *[1] * (len(shape) - 1))
        stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), e, stream))
    return stream


def seq_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, N_CLASSES))


def small_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18(num_classes=N_CLASSES, width=8)


def naive(model: nn.Module, plugins: list, *, mb: int = 8, epochs: int = 1, momentum: float = 0.9,
          weight_decay: float = 1e-3) -> Naive:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    return Naive(model, opt, train_mb_size=mb, train_epochs=epochs, plugins=plugins, evaluator=EvaluationPlugin())


def train(strategy: Naive, experiences, seed: int = 0) -> None:
    for exp in experiences:
        torch.manual_seed(seed + 101 * exp.current_experience)
        strategy.train(exp)


def memory(plugin: LatentReplayPlugin) -> tuple[torch.Tensor, torch.Tensor]:
    pol = plugin.storage_policy
    return pol.x[: pol.size], pol.y[: pol.size]


def lower_only(plugin: LatentReplayPlugin) -> list[torch.Tensor]:
    lower, upper = plugin.parts
    up = {id(p) for p in upper.parameters()}
    return [p for p in lower.parameters() if id(p) not in up]


def eval_latents(plugin: LatentReplayPlugin, experiences) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower part's eval-mode latents of every sample of ``experiences`` (flattened), and the targets."""
    lower, _ = plugin.parts
    device = next(lower.parameters()).device
    x = torch.cat([e.dataset.x for e in experiences]).to(device)
    y = torch.cat([e.dataset.targets for e in experiences])
    was = lower.training
    lower.eval()
    with torch.no_grad():
        lat = lower(x).flatten(1).cpu()
    lower.train(was)
    return lat, y


def check_rows(rows: torch.Tensor, labels: torch.Tensor, lat: torch.Tensor, y: torch.Tensor,
               rtol: float = 1e-4) -> None:
    """Every row is (up to rounding) the latent of exactly one sample, and its label is that sample's target."""
    rows, labels = rows.cpu(), labels.cpu()
    dist = torch.cdist(rows.flatten(1), lat, compute_mode="donot_use_mm_for_euclid_dist")
    best = dist.topk(2, largest=False)
    scale = lat.norm(dim=1).max()
    assert bool((best.values[:, 0] <= rtol * scale).all()), "a stored latent is no sample's latent"
    assert bool((best.values[:, 1] > 100 * rtol * scale).all()), "a stored latent matches several samples"
    assert torch.equal(labels, y[best.indices[:, 0]])


def check_labels_against_latents(plugin: LatentReplayPlugin, experiences) -> None:
    """Every stored latent is the eval-mode latent of exactly one sample seen, and its stored label is that
    sample's target."""
    check_rows(*memory(plugin), *eval_latents(plugin, experiences))


# ------------------------------------------------------------------------------------------------- freezing, memory

@pytest.mark.parametrize("case", ["sequential", "resnet18"])
def test_frozen_lower_part_labels_and_preallocation(case: str) -> None:
    if case == "sequential":
        model, layer, stream, mb = seq_model(), "2", make_stream(), 8
    else:
        model, layer, stream, mb = small_resnet(), "layer3", make_stream((16, 16, 16), image=True), 8
    plugin = LatentReplayPlugin(layer, 12)
    strategy = naive(model, [plugin], mb=mb)
    train(strategy, stream[:1])
    assert strategy.model is model
    assert not plugin.frozen and all(p.requires_grad for p in model.parameters())
    check_labels_against_latents(plugin, stream[:1])
    ptr, shape = plugin.storage_policy.x.data_ptr(), plugin.storage_policy.x.shape
    assert shape[0] == 12 and plugin.storage_policy.size == 12
    frozen = [p.detach().clone() for p in lower_only(plugin)]
    lower_buffers = [b.clone() for b in plugin.parts[0].buffers()]
    up_ids = {id(p) for p in plugin.parts[1].parameters()}
    upper_before = [p.detach().clone() for p in model.parameters() if id(p) in up_ids]
    for i in (1, 2):
        train(strategy, stream[i:i + 1])
        assert strategy.model is model and plugin.frozen
        check_labels_against_latents(plugin, stream[: i + 1])
        assert plugin.storage_policy.x.data_ptr() == ptr and plugin.storage_policy.x.shape == shape
    assert frozen and all(torch.equal(a, p) for a, p in zip(frozen, lower_only(plugin), strict=True))
    assert all(not p.requires_grad for p in lower_only(plugin))
    # BatchNorm statistics of the lower part stay too: it runs in eval mode once frozen.
    assert all(torch.equal(a, b) for a, b in zip(lower_buffers, plugin.parts[0].buffers(), strict=True))
    upper_after = [p for p in model.parameters() if id(p) in up_ids]
    assert all(not torch.equal(a, b) for a, b in zip(upper_before, upper_after, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_lives_on_the_cuda_training_device() -> None:
    model, stream = seq_model(), make_stream()
    plugin = LatentReplayPlugin("2", 12, policy="class_balanced")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Naive(model, opt, train_mb_size=8, device="cuda", plugins=[plugin], evaluator=EvaluationPlugin())
    train(strategy, stream[:1])
    x = plugin.storage_policy.x
    assert x.device.type == "cuda" and x.shape[0] == 12
    frozen = [p.detach().clone() for p in lower_only(plugin)]
    train(strategy, stream[1:])
    assert plugin.storage_policy.x.data_ptr() == x.data_ptr()
    assert all(torch.equal(a, p) for a, p in zip(frozen, lower_only(plugin), strict=True))
    check_labels_against_latents(plugin, stream)


def test_without_freezing_the_lower_part_trains_and_new_latents_come_from_its_final_state() -> None:
    model, stream = seq_model(), make_stream()
    plugin = LatentReplayPlugin("2", 12, freeze_lower_after_first=False)
    strategy = naive(model, [plugin])
    train(strategy, stream[:1])
    before = [p.detach().clone() for p in lower_only(plugin)]
    lat0, y0 = eval_latents(plugin, stream[:1])
    train(strategy, stream[1:2])
    assert not plugin.frozen and all(p.requires_grad for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, lower_only(plugin), strict=True))
    rows, labels = memory(plugin)
    new = labels >= 2
    assert int(new.sum()) == 6
    check_rows(rows[new], labels[new], *eval_latents(plugin, stream[1:2]))  # the lower part at the end of exp 1
    check_rows(rows[~new], labels[~new], lat0, y0)  # kept as stored: stale, the lower part has moved on


class GradProbe:
    """After the plugin: at the first training iteration of experience 1, the current batch, the memory, the model's
    state and the gradients."""

    def __init__(self, plugin: LatentReplayPlugin) -> None:
        self.plugin, self.rec = plugin, None

    def before_training_iteration(self, strategy, **kw) -> None:
        if strategy.clock.train_exp_counter == 1 and self.rec is None:
            mx, my = memory(self.plugin)
            self.rec = {"x": strategy.mb_x.clone(), "y": strategy.mb_y.clone(), "mx": mx.clone(), "my": my.clone(),
                        "state": copy.deepcopy(strategy.model.state_dict())}

    def before_forward(self, strategy, **kw) -> None:
        if self.rec is not None and "names" not in self.rec:
            self.rec["stand_in"] = strategy.model
            self.rec["names"] = [n for n, _ in strategy.model.named_parameters()]
            self.rec["keys"] = list(strategy.model.state_dict())
            self.rec["mb_y"] = strategy.mb_y.clone()

    def after_forward(self, strategy, **kw) -> None:
        if self.rec is not None and "rows" not in self.rec:
            self.rec["rows"] = strategy.mb_output.shape[0]

    def after_backward(self, strategy, **kw) -> None:
        if self.rec is not None and "grads" not in self.rec:
            self.rec["grads"] = {n: p.grad.clone() for n, p in strategy.model.named_parameters() if p.grad is not None}


def test_replayed_rows_reach_the_loss() -> None:
    model, stream = seq_model(), make_stream()
    plugin = LatentReplayPlugin("2", 6, replay_mb_size=6)  # every stored latent in every minibatch
    probe = GradProbe(plugin)
    strategy = naive(model, [plugin, probe], momentum=0.0, weight_decay=0.0)
    train(strategy, stream[:2])
    rec = probe.rec
    # The stand-in was strategy.model during the forward, with the model's names; the model came back.
    assert rec["stand_in"] is not model and strategy.model is model
    assert rec["names"] == [n for n, _ in model.named_parameters()] and rec["keys"] == list(model.state_dict())
    n_cur = rec["x"].shape[0]
    assert rec["rows"] == n_cur + 6 and rec["mb_y"].shape[0] == n_cur + 6
    assert Counter(rec["mb_y"][n_cur:].tolist()) == Counter(rec["my"].tolist())

    def upper_grads(with_replay: bool) -> dict[str, torch.Tensor]:
        ref = seq_model()
        ref.load_state_dict(rec["state"])
        with torch.no_grad():
            lat = ref[1](ref[0](rec["x"]))
        y = rec["y"]
        if with_replay:
            lat, y = torch.cat((lat, rec["mx"])), torch.cat((y, rec["my"]))
        nn.functional.cross_entropy(ref[2:](lat), y).backward()
        return {f"{i}.{n}": p.grad for i in (2, 4) for n, p in ref[i].named_parameters()}

    with_replay, without = upper_grads(True), upper_grads(False)
    assert set(rec["grads"]) == set(with_replay)  # the frozen lower part has no gradient
    for n, g in with_replay.items():
        torch.testing.assert_close(rec["grads"][n], g, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(without[n], rec["grads"][n], atol=1e-4) for n in without)


# ------------------------------------------------------------------------------------------------- policies

def class_counts(plugin: LatentReplayPlugin) -> dict[int, int]:
    return dict(sorted(Counter(memory(plugin)[1].tolist()).items()))


def counts_after_each(policy: str, mem_size: int, sizes, seed: int = 0) -> tuple[list[dict[int, int]], list[list[int]]]:
    """Per experience, the stored labels per class and per memory row (each checked against the samples' latents)."""
    stream = make_stream(sizes, seed=seed)
    plugin = LatentReplayPlugin("2", mem_size, policy=policy, seed=seed)
    strategy = naive(seq_model(), [plugin])
    counts, rows = [], []
    for exp in stream:
        train(strategy, [exp])
        counts.append(class_counts(plugin))
        rows.append(memory(plugin)[1].tolist())
        check_labels_against_latents(plugin, stream[: exp.current_experience + 1])
    return counts, rows


def group(counts: dict[int, int]) -> dict[int, int]:
    """Stored rows per experience (classes 2e, 2e+1)."""
    out: Counter = Counter()
    for c, n in counts.items():
        out[c // 2] += n
    return dict(sorted(out.items()))


def test_ar1_policy_counts() -> None:
    counts, _ = counts_after_each("ar1", 12, (20, 20, 20))
    # h = 12 // (i + 1) new rows after experience i: 12, then 6 of 12 replaced, then 4 of 12.
    assert sum(counts[0].values()) == 12 and group(counts[0]) == {0: 12}
    assert group(counts[1]) == {0: 6, 1: 6}
    assert group(counts[2])[2] == 4 and sum(counts[2].values()) == 12


def test_ar1_policy_small_first_experience() -> None:
    counts, _ = counts_after_each("ar1", 12, (5, 20, 20))
    assert counts[0] == {0: 3, 1: 2}  # every sample of a first experience smaller than the memory
    assert group(counts[1]) == {1: 5}  # h = min(12 // 2, 20, size 5) = 5: every row replaced
    assert group(counts[2]).get(2) == 4 and sum(counts[2].values()) == 5  # h = 12 // 3 = 4 of the 5 rows


def reference_reservoir(sizes, mem_size: int, seed: int) -> list[list[int]]:
    """Algorithm R one sample at a time (dataset order, experience after experience), with the draws the policy
    documents: a generator seeded with 2·seed, one float64 uniform per sample once the memory is full. Returns
    the labels per memory slot after each experience."""
    g = torch.Generator().manual_seed(2 * seed)
    slots: list[int] = []
    seen, out = 0, []
    for e, n in enumerate(sizes):
        labels = (torch.arange(n) % 2 + 2 * e).tolist()
        late = max(0, n - max(0, mem_size - seen))
        u = torch.rand(late, generator=g, dtype=torch.float64).tolist()
        for k in range(n):
            if seen < mem_size:
                slots.append(labels[k])
            else:
                j = math.floor(u.pop(0) * (seen + 1))
                if j < mem_size:
                    slots[j] = labels[k]
            seen += 1
        out.append(list(slots))
    return out


def test_reservoir_policy_counts() -> None:
    sizes = (8, 20, 20)
    counts, rows = counts_after_each("reservoir", 12, sizes, seed=3)
    assert counts[0] == {0: 4, 1: 4}  # 8 < 12: everything seen so far
    ref = reference_reservoir(sizes, 12, seed=3)
    assert rows == ref  # row by row: a sample's latent sits in the slot algorithm R gives the sample
    assert [sum(c.values()) for c in counts] == [8, 12, 12]


def test_class_balanced_policy_counts() -> None:
    counts, _ = counts_after_each("class_balanced", 13, (20, 20, 20))
    # 13 // C per class seen, the 13 % C left over one each to the classes seen first.
    assert counts == [{0: 7, 1: 6}, {0: 4, 1: 3, 2: 3, 3: 3}, {0: 3, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2}]


# ------------------------------------------------------------------------------------------------- composition

@pytest.mark.parametrize("make_reg", [lambda: EWCPlugin(ewc_lambda=10.0), lambda: SynapticIntelligencePlugin(1.0),
                                      lambda: MASPlugin(lambda_reg=1.0), lambda: RWalkPlugin(separate_grad_pass=True)],
                         ids=["ewc", "si", "mas", "rwalk"])
def test_composes_with_regularisers(make_reg) -> None:
    model, stream = seq_model(), make_stream()
    plugin, losses = LatentReplayPlugin("2", 10), LossRecorder()
    strategy = naive(model, [plugin, make_reg(), losses])
    train(strategy, stream[:1])
    frozen = [p.detach().clone() for p in lower_only(plugin)]
    train(strategy, stream[1:])
    assert strategy.model is model
    assert losses.losses and all(math.isfinite(v) for v in losses.losses)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    # The penalty's gradient skips parameters without requires_grad, so momentum and decay cannot move them.
    assert all(torch.equal(a, p) for a, p in zip(frozen, lower_only(plugin), strict=True))
    alone = LossRecorder()
    train(naive(seq_model(), [LatentReplayPlugin("2", 10), alone]), stream)
    n0 = len(stream[0].dataset) // 8 + 1  # the first experience's iterations: no penalty yet
    assert alone.losses[:n0] == losses.losses[:n0] and alone.losses[n0:] != losses.losses[n0:]


@pytest.mark.parametrize("kw", [{"precision": "bf16-mixed"}, {"accumulate_grad_batches": 2}],
                         ids=["bf16", "accumulate"])
def test_mixed_precision_and_accumulation(kw) -> None:
    model, stream = seq_model(), make_stream()
    plugin, losses = LatentReplayPlugin("2", 10), LossRecorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Naive(model, opt, train_mb_size=8, plugins=[plugin, losses], evaluator=EvaluationPlugin(), **kw)
    train(strategy, stream[:1])
    frozen = [p.detach().clone() for p in lower_only(plugin)]
    train(strategy, stream[1:])
    assert all(math.isfinite(v) for v in losses.losses)
    assert all(torch.equal(a, p) for a, p in zip(frozen, lower_only(plugin), strict=True))
    assert plugin.storage_policy.x.dtype == torch.float32  # stored outside autocast, cast when replayed
    check_labels_against_latents(plugin, stream)


def test_split_follows_a_growing_head() -> None:
    torch.manual_seed(0)
    model = GrowingHead()
    stream = make_stream(n_features=10)
    plugin = LatentReplayPlugin("classifier", 8, policy="class_balanced")
    strategy = naive(model, [plugin])
    train(strategy, stream)
    assert model.classifier.out_features == 6
    assert any(m is model.classifier for m in plugin.parts[1].modules())
    check_labels_against_latents(plugin, stream)


# ------------------------------------------------------------------------------------------------- state

def test_checkpoint_resumes_exactly() -> None:
    stream = make_stream()

    def build():
        model = seq_model()
        plugin = LatentReplayPlugin("2", 10, policy="reservoir", replay_mb_size=4, seed=5)
        return naive(model, [plugin]), model, plugin

    straight, model_a, _ = build()
    train(straight, stream)
    first, _, plugin_b = build()
    train(first, stream[:2])
    state = ck.strategy_state_dict(first)
    resumed, model_c, plugin_c = build()
    ck.load_strategy_state_dict(resumed, state)
    assert torch.equal(memory(plugin_c)[0], memory(plugin_b)[0])
    train(resumed, stream[2:])
    for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(a, c)


def test_load_state_dict_validates_before_changing_anything() -> None:
    stream = make_stream()
    plugin = LatentReplayPlugin("2", 10)
    train(naive(seq_model(), [plugin]), stream[:1])
    sd = plugin.state_dict()
    other = LatentReplayPlugin("2", 10, seed=1)
    train(naive(seq_model(1), [other]), stream[:1])
    kept, draws = memory(other)[0].clone(), other._draws.get_state()
    bad_rows = copy.deepcopy(sd)
    bad_rows["policy"]["y"] = bad_rows["policy"]["y"][:-1]
    bad_draws = {**sd, "draws": torch.zeros(3, dtype=torch.uint8)}
    cases = [({**sd, "latent_layer": "4"}, "latent_layer"), ({**sd, "mem_size": 11}, "mem_size"),
             ({**sd, "plugin": "ReplayPlugin"}, "LatentReplayPlugin"), (bad_rows, "rows"),
             (bad_draws, "generator"), (LatentReplayPlugin("2", 10, policy="reservoir").state_dict(), "reservoir")]
    for bad, words in cases:
        with pytest.raises(ValueError, match=words):
            other.load_state_dict(bad)
        assert torch.equal(memory(other)[0], kept) and torch.equal(other._draws.get_state(), draws)
    with pytest.raises(TypeError):
        other.load_state_dict([])
    other.load_state_dict(sd)
    assert torch.equal(memory(other)[0], memory(plugin)[0]) and torch.equal(memory(other)[1], memory(plugin)[1])


# ------------------------------------------------------------------------------------------------- bad arguments

def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mem_size"):
        LatentReplayPlugin("2", 0)
    with pytest.raises(TypeError, match="mem_size"):
        LatentReplayPlugin("2", 2.5)
    with pytest.raises(ValueError, match="policy"):
        LatentReplayPlugin("2", 4, policy="fifo")
    with pytest.raises(TypeError, match="policy"):
        LatentReplayPlugin("2", 4, policy=3)
    with pytest.raises(ValueError, match="max_size"):
        LatentReplayPlugin("2", 4, policy=AR1Buffer(5))
    with pytest.raises(ValueError, match="replay_mb_size"):
        LatentReplayPlugin("2", 4, replay_mb_size=0)
    with pytest.raises(ValueError, match="seed"):
        LatentReplayPlugin("2", 4, seed=-1)
    with pytest.raises(TypeError, match="freeze_lower_after_first"):
        LatentReplayPlugin("2", 4, freeze_lower_after_first="yes")
    with pytest.raises(ValueError, match="latent_layer"):
        LatentReplayPlugin("", 4)
    with pytest.raises(TypeError, match="latent_layer"):
        LatentReplayPlugin(2, 4)
    stream = make_stream()
    with pytest.raises(ValueError, match="has no module 'layer9'"):  # split_at's own message
        naive(seq_model(), [LatentReplayPlugin("layer9", 4)]).train(stream[0])
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="task labels"):
        naive(MultiHead(), [LatentReplayPlugin("heads", 4)]).train(make_stream(n_features=10)[0])
