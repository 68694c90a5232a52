"""``clfast.strategies.AR1`` (``docs/avalanche-semantics.md`` §4): freezing, BRN switch, modes, minibatch
composition, replay labels, a 3-experience run with and without SI, the whole-strategy state_dict, hyper-parameter
checks and ``clfast train --strategy ar1``. Small inputs: 32-px images and a quarter-width MobileNetV1."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch import nn

from clfast.nn import BatchRenorm2d, MobileNetV1
from clfast.plugins.latent_memory import minibatch_split
from clfast.strategies import AR1, STRATEGIES
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def make_stream(name: str = "train", n_exp: int = 3, n: int = 20, classes_per_exp: int = 2, seed: int = 0) -> Stream:
    g = torch.Generator().manual_seed(seed)
    stream = Stream(name)
    for e in range(n_exp):
        y = torch.arange(n) % classes_per_exp + e * classes_per_exp
        x = torch.randn(n, 3, SIZE, SIZE, generator=g) + 0.3 * y.float().reshape(-1, 1, 1, 1)
        stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), e, stream))
    return stream


def small_model(num_classes: int = 6, latent_layer_num: int = 19) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, latent_layer_num=latent_layer_num, width_mult=0.25)


def make_ar1(**kw) -> AR1:
    args = dict(model=small_model(), rm_sz=12, train_mb_size=8, eval_mb_size=16, train_epochs=1, evaluator=None,
                lr=0.01, inc_lr=0.001)
    args.update(kw)
    return AR1(**args)


class Recorder:
    """Records hook calls, modes, minibatch sizes, losses and BRN settings."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.rows: list[tuple[int, int, int, int]] = []  # (exp, iteration, current, total labels)
        self.losses: list[float] = []
        self.train_modes: set[tuple[bool, bool, bool]] = set()
        self.eval_modes: set[bool] = set()
        self.brn_at_exp_start: list[tuple[float, float, float, float]] = []
        self.frozen_at_exp_start: list[set[str]] = []

    def __getattr__(self, name: str):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: self.calls.update([name])
        raise AttributeError(name)

    def before_training_exp(self, strategy, **kw):
        self.calls.update(["before_training_exp"])
        brn = next(m for m in strategy.model.modules() if isinstance(m, BatchRenorm2d))
        self.brn_at_exp_start.append((brn.momentum, brn.r_max_inc_step, float(brn.r_max), float(brn.d_max)))
        self.frozen_at_exp_start.append({n for n, p in strategy.model.named_parameters() if not p.requires_grad})

    def before_forward(self, strategy, **kw):
        self.calls.update(["before_forward"])
        m = strategy.model
        lat = {mod.training for mod in m.lat_features.modules()}
        end = {mod.training for mod in m.end_features.modules()}
        assert len(lat) == 1 and len(end) == 1
        self.train_modes.add((lat.pop(), end.pop(), m.output.training))
        self.rows.append((strategy.clock.train_exp_counter, strategy.clock.train_epoch_iterations,
                          strategy.mb_x.shape[0], strategy.mb_y.shape[0]))

    def before_eval_forward(self, strategy, **kw):
        self.calls.update(["before_eval_forward"])
        self.eval_modes |= {mod.training for mod in strategy.model.modules()}

    def after_training_iteration(self, strategy, **kw):
        self.calls.update(["after_training_iteration"])
        self.losses.append(float(strategy.loss.detach()))


# ------------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("name", ["lat_features.19.bn.beta", "lat_features.19.bn", "lat_features.5.conv.weight",
                                  "lat_features.5"])
def test_freezing_from_the_second_experience_for_layer_and_parameter_names(name):
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(freeze_below_layer=name, plugins=[rec])
    stream = make_stream(n_exp=2, n=8)
    for exp in stream:
        s.train(exp)
    index = int(name.split(".")[1])
    # Every conv weight before the target layer; norm layers and the target layer itself never.
    expected = {f"lat_features.{i}.conv.weight" for i in range(index)}
    if name.endswith((".bn", ".bn.beta")):
        expected.add(f"lat_features.{index}.conv.weight")
    assert rec.frozen_at_exp_start == [set(), expected]
    assert all(p.requires_grad for n, p in s.model.named_parameters() if n.startswith(("end_features", "output")))


def test_default_freeze_target_freezes_the_20_latent_conv_weights():
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec])
    for exp in make_stream(n_exp=2, n=8):
        s.train(exp)
    assert len(rec.frozen_at_exp_start[1]) == 20  # Avalanche's old default froze 28 (the whole model but norms)


def test_a_freeze_name_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match="never freezes the whole model"):
        make_ar1(freeze_below_layer="lat_features.99.bn")
    with pytest.raises(ValueError, match="freeze_below_layer"):
        make_ar1(model=small_model(latent_layer_num=10))  # the default target lat_features.19 does not exist


# ------------------------------------------------------------------------------------- BRN, modes, composition


def test_brn_settings_switch_after_the_first_experience_and_modes_follow_4_5():
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec], init_update_rate=0.01, inc_step=4.1e-5, inc_update_rate=5e-5, max_r_max=1.25,
                 max_d_max=0.5)
    assert sum(isinstance(m, BatchRenorm2d) for m in s.model.modules()) == 27
    assert not any(isinstance(m, nn.BatchNorm2d) for m in s.model.modules())
    stream = make_stream(n_exp=2, n=8)
    s.train(stream[0])
    s.eval(stream)
    s.train(stream[1])
    assert rec.brn_at_exp_start[0] == pytest.approx((0.01, 4.1e-5, 1.0, 0.0))
    assert rec.brn_at_exp_start[1] == pytest.approx((5e-5, 0.0, 1.25, 0.5))
    # lat_features in eval mode in every experience (the first included), end_features and output in train mode
    assert rec.train_modes == {(False, True, True)}
    assert rec.eval_modes == {False}


def test_minibatches_hold_current_then_replayed_patterns_as_4_6_says():
    torch.manual_seed(0)
    rec = Recorder()
    n, rm, b = 20, 12, 8
    s = make_ar1(plugins=[rec], rm_sz=rm, train_mb_size=b, train_epochs=2)
    stream = make_stream(n_exp=2, n=n)
    s.train(stream[0])
    assert s.memory.size == rm
    s.train(stream[1])
    cur_bs, replay_bs = minibatch_split(n, rm, b, True)
    assert s.current_split == (cur_bs, replay_bs) == (5, 3)
    exp1 = [r for r in rec.rows if r[0] == 1]
    n_iter = -(-n // cur_bs)
    assert len(exp1) == 2 * n_iter
    for _, it, cur, total in exp1:
        assert cur == min(cur_bs, n - it * cur_bs)
        assert total == cur + max(0, min(replay_bs, rm - it * replay_bs))
    assert all(cur == total for e, _, cur, total in rec.rows if e == 0)


# ------------------------------------------------------------------------------------------------ replay labels


def _latents(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.lat_features.eval()
    with torch.no_grad():
        return model.lat_features(x)


def _match(memory_x: torch.Tensor, all_lat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(memory_x.flatten(1).double(), all_lat.flatten(1).double())
    dist, idx = d.min(dim=1)
    return dist / all_lat.flatten(1).norm(dim=1).mean(), idx


def test_replay_labels_match_the_stored_activations():
    """Recompute the latents of every training pattern with lat_features in eval mode: each memory entry is one of
    them, and its label is that pattern's label (Avalanche: chance-level agreement, §4.7)."""
    torch.manual_seed(0)
    stream = make_stream(n_exp=2, n=20, classes_per_exp=2)
    # lr tiny in the first experience: the latent network barely moves, so its first-epoch latents are reproducible
    s = make_ar1(lr=1e-9, inc_lr=0.01, rm_sz=16, train_epochs=2)
    s.train(stream[0])
    x0, y0 = stream[0].dataset.x, stream[0].dataset.targets
    dist, idx = _match(s.memory.latents, _latents(s.model, x0))
    assert dist.max() < 1e-4
    assert len(set(idx.tolist())) == 16  # distinct patterns
    assert torch.equal(s.memory.labels, y0[idx])
    s.train(stream[1])  # lat_features frozen from here: the latents are exact
    x = torch.cat((x0, stream[1].dataset.x))
    y = torch.cat((y0, stream[1].dataset.targets))
    dist, idx = _match(s.memory.latents, _latents(s.model, x))
    assert dist.max() < 1e-4
    assert torch.equal(s.memory.labels, y[idx])
    assert Counter(s.memory.labels.tolist()).keys() == {0, 1, 2, 3}
    assert sum(v for k, v in Counter(s.memory.labels.tolist()).items() if k >= 2) == 8  # h = 16 // 2


def test_replayed_classes_are_counted_into_cwr_star():
    torch.manual_seed(0)
    s = make_ar1(rm_sz=12)
    stream = make_stream(n_exp=2, n=10)
    s.train(stream[0])
    replayed = torch.bincount(s.memory.labels, minlength=6)
    s.train(stream[1])
    # past_j: exp 0 counts, plus (exp 1) the replayed counts of those classes added to cur_j (§4.5 step 4, §4.8)
    assert s.cwr.past_j[:2].tolist() == [5 + int(replayed[0]), 5 + int(replayed[1])]
    assert s.cwr.past_j[2:4].tolist() == [5, 5]


# ---------------------------------------------------------------------------------------------- runs and state


@pytest.mark.parametrize("ewc_lambda", [0.0, 0.5])
def test_three_experience_run_with_and_without_si(ewc_lambda):
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec], ewc_lambda=ewc_lambda, train_epochs=2)
    names = [type(p).__name__ for p in s.plugins]
    expected = ["Recorder", *(["SynapticIntelligencePlugin"] if ewc_lambda else []), "CWRStarPlugin",
                "EvaluationPlugin", "Clock"]
    assert names == expected
    stream = make_stream(n_exp=3, n=12)
    lat_before = {n: p.detach().clone() for n, p in s.model.lat_features.named_parameters()}
    for exp in stream:
        s.train(exp)
        s.eval(stream)
    assert len(rec.losses) == rec.calls["after_training_iteration"] > 0
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    for hook in ("before_training_exp", "after_training_exp"):
        assert rec.calls[hook] == 3
    assert rec.calls["before_training_epoch"] == 6
    assert rec.calls["before_backward"] == rec.calls["after_update"] == len(rec.losses)
    assert s.clock.train_exp_counter == 3
    assert s.memory.size == 12 and set(s.memory.labels.tolist()) <= set(range(6))
    assert (s.si is None) == (ewc_lambda == 0)
    changed = [n for n, p in s.model.lat_features.named_parameters() if not torch.equal(p, lat_before[n])]
    assert changed  # lat_features trains in the first experience


def _first_loss_of_next_experience(s: AR1, exp) -> float:
    rec = Recorder()
    s.plugins.insert(0, rec)
    try:
        s.train(exp)
    finally:
        s.plugins.remove(rec)
    return rec.losses[0]


@pytest.mark.parametrize("ewc_lambda", [0.0, 0.5])
def test_state_dict_round_trip_resumes_identically(ewc_lambda):
    stream = make_stream(n_exp=3, n=12)
    torch.manual_seed(0)
    a = make_ar1(ewc_lambda=ewc_lambda, train_epochs=2)
    init = {k: v.clone() for k, v in a.model.state_dict().items()}
    a.train(stream[0])
    a.train(stream[1])
    sd = a.state_dict()
    assert any("running_avg_std" in k for k in sd["model"])
    assert sd["memory"]["size"] == 12 and sd["clock"]["train_exp_counter"] == 2
    torch.manual_seed(123)  # a different model initialisation and generator: everything comes from the state
    b = make_ar1(ewc_lambda=ewc_lambda, train_epochs=2)
    b.model.load_state_dict(init)
    b.load_state_dict(sd)
    loss_a = _first_loss_of_next_experience(a, stream[2])
    loss_b = _first_loss_of_next_experience(b, stream[2])
    assert loss_a == loss_b
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    assert torch.equal(a.memory.latents, b.memory.latents) and torch.equal(a.memory.labels, b.memory.labels)


def test_load_state_dict_checks_the_hyper_parameters():
    torch.manual_seed(0)
    a = make_ar1()
    sd = a.state_dict()
    with pytest.raises(ValueError, match="rm_sz"):
        make_ar1(rm_sz=13).load_state_dict(sd)
    with pytest.raises(ValueError, match="not an AR1"):
        make_ar1().load_state_dict({"strategy": "Naive"})


# -------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kw,err,match", [
    ({"lr": 0}, ValueError, "lr"), ({"inc_lr": -1.0}, ValueError, "inc_lr"), ({"momentum": 1.0}, ValueError,
                                                                            "momentum"),
    ({"l2": -0.1}, ValueError, "l2"), ({"train_epochs": 0}, ValueError, "train_epochs"),
    ({"init_update_rate": 1.5}, ValueError, "init_update_rate"), ({"max_r_max": 0.5}, ValueError, "max_r_max"),
    ({"max_d_max": -1}, ValueError, "max_d_max"), ({"inc_step": float("nan")}, ValueError, "inc_step"),
    ({"rm_sz": -1}, ValueError, "rm_sz"), ({"rm_sz": 1.5}, TypeError, "rm_sz"), ({"ewc_lambda": -1}, ValueError,
                                                                                 "ewc_lambda"),
    ({"train_mb_size": 0}, ValueError, "train_mb_size"), ({"freeze_below_layer": None}, TypeError, "freeze"),
    ({"num_classes": 7}, ValueError, "num_classes"), ({"pin_memory": "yes"}, TypeError, "pin_memory"),
    ({"replay_device": "meta"}, ValueError, "cpu or cuda"),
])
def test_bad_hyper_parameters_are_named(kw, err, match):
    with pytest.raises(err, match=match):
        make_ar1(**kw)


def test_models_without_the_latent_split_are_refused():
    with pytest.raises(TypeError, match="lat_features"):
        make_ar1(model=nn.Sequential(nn.Linear(3, 2)))

    class NoLatentForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.lat_features, self.end_features, self.output = nn.Identity(), nn.Identity(), nn.Linear(2, 2)

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="latent_input"):
        make_ar1(model=NoLatentForward(), freeze_below_layer="lat_features")


def test_positional_order_is_avalanches_old_one_and_the_default_model_is_mobilenet():
    torch.manual_seed(0)
    s = AR1(None, 0.002, 0.8, 0.001, 1, 0.02, 1e-4, 1.5, 0.7, 1e-5, 7, "lat_features.19.bn.beta", 19, 0, 4, 4,
            None, None, None, -1, 1e-4, small_model())
    assert (s.lr, s.momentum, s.l2, s.train_epochs, s.rm_sz, s.inc_lr) == (0.002, 0.8, 0.001, 1, 7, 1e-4)
    assert s.optimizer.param_groups[0]["weight_decay"] == 0.001
    default = AR1(num_classes=10, evaluator=None)
    assert isinstance(default.model, MobileNetV1) and default.model.output.out_features == 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_pin_memory_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        make_ar1(pin_memory=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_memory_path_trains_on_cpu():
    torch.manual_seed(0)
    s = make_ar1(pin_memory=True)
    for exp in make_stream(n_exp=2, n=8):
        s.train(exp)
    assert s.memory.x.is_pinned() and s.memory.size == 8


# ---------------------------------------------------------------------------------------------- command line


def test_registry_builds_ar1_from_a_model_and_an_sgd():
    torch.manual_seed(0)
    model = small_model(num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.5)
    s = STRATEGIES["ar1"](model, opt, None, train_mb_size=4, train_epochs=1, eval_mb_size=8, device="cpu",
                          evaluator=None)
    assert isinstance(s, AR1) and s.lr == 0.02 and s.momentum == 0.5 and s.model is model


def test_clfast_train_ar1_on_split_digits(tmp_path):
    from clfast.cli import main

    code = main(["train", "--strategy", "ar1", "--scenario", "split-digits", "--n-experiences", "2", "--epochs", "1",
                 "--rm-size", "20", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "results.json").read_text())
    m = res["accuracy_matrix"]
    assert len(m) == 2 and all(0.0 <= v <= 1.0 for r in m for v in r)
    assert res["config"]["strategy"] == "ar1" and res["config"]["rm_size"] == 20


def test_lat_train_mode_first_exp_trains_the_latent_brn_and_stores_eval_mode_latents():
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec], lat_train_mode_first_exp=True, rm_sz=16, train_epochs=2)
    stream = make_stream(n_exp=2, n=20)
    brn = s.model.lat_features[0].bn
    stats = brn.running_avg_mean.clone()
    s.train(stream[0])
    assert not torch.equal(brn.running_avg_mean, stats)  # batch statistics learnt in the first experience
    x0, y0 = stream[0].dataset.x, stream[0].dataset.targets
    dist, idx = _match(s.memory.latents, _latents(s.model, x0))  # latents of the final network, eval mode
    assert dist.max() < 1e-5 and torch.equal(s.memory.labels, y0[idx]) and len(set(idx.tolist())) == 16
    s.train(stream[1])
    assert rec.train_modes == {(True, True, True), (False, True, True)}
