"""AR1 over any backbone (``AR1(model=..., latent_layer=...)`` through :class:`clfast.nn.LatentModel`): a tiny
torchvision-layout ResNet-18 split at ``layer3`` on 16-px images. The references are independent of the adapter:
latents are caught by a forward pre-hook on the *original* model's ``layer3``, the frozen set is listed from the
model's own modules, CWR*'s consolidation is recomputed from §4.8's formula, and the native MobileNetV1 path is the
reference for the same network given as a plain model."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from clfast.nn import BatchRenorm2d, LatentModel, MobileNetV1, split_at
from clfast.strategies import AR1
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.testing.resnet import resnet18

SIZE = 16
CLASSES = 6
LOWER = ("conv1", "bn1", "layer1", "layer2")  # what the ResNet's forward runs before layer3

pytestmark = pytest.mark.usefixtures("one_thread")


def make_stream(n_exp: int = 3, n: int = 20, classes_per_exp: int = 2, seed: int = 0, size: int = SIZE) -> Stream:
    g = torch.Generator().manual_seed(seed)
    stream = Stream("train")
    for e in range(n_exp):
        y = torch.arange(n) % classes_per_exp + e * classes_per_exp
        x = torch.randn(n, 3, size, size, generator=g) + 0.3 * y.float().reshape(-1, 1, 1, 1)
        stream.append(Experience(TensorExperienceDataset(x, y, torch.zeros(n)), e, stream))
    return stream


def make_ar1(model: nn.Module | None = None, **kw) -> AR1:
    args = dict(model=resnet18(num_classes=CLASSES, width=8, in_channels=3) if model is None else model,
                latent_layer="layer3", rm_sz=12, train_mb_size=8, eval_mb_size=16, train_epochs=1, evaluator=None,
                lr=0.01, inc_lr=0.001)
    args.update(kw)
    return AR1(**args)


class Recorder:
    """Modes of the two parts in every training forward; the fc layer as trained, before CWR* consolidates it;
    the memory's labels and the model's state when each experience starts."""

    def __init__(self) -> None:
        self.modes: set[tuple[bool, bool]] = set()
        self.trained_fc: list[Tensor] = []
        self.memory_labels: list[Tensor] = []
        self.states: list[dict[str, Tensor]] = []

    def __getattr__(self, name: str):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def before_training_exp(self, strategy, **kw):
        mem = strategy.memory
        self.memory_labels.append(mem.labels.clone() if mem.size else torch.zeros(0, dtype=torch.long))
        self.states.append({n: t.clone() for n, t in strategy.model.state_dict().items()})

    def before_forward(self, strategy, **kw):
        lat = {m.training for m in strategy.model.lat_features.modules()}
        end = {m.training for m in strategy.model.end_features.modules()}
        assert len(lat) == 1 and len(end) == 1
        self.modes.add((lat.pop(), end.pop()))

    def after_training_exp(self, strategy, **kw):  # user plugins run before SI and CWR* (§4.5 step 3)
        self.trained_fc.append(strategy.model.output.weight.detach().clone())


def _latents_by_hook(model: nn.Module, x: Tensor) -> Tensor:
    """The input of ``model.layer3`` in ``model(x)`` in eval mode: the original model's own forward, no split."""
    seen: list[Tensor] = []
    modes = [(m, m.training) for m in model.modules()]
    hook = model.layer3.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
        for m, mode in modes:
            m.training = mode
    return seen[0]


def _match(memory_x: Tensor, all_lat: Tensor) -> tuple[Tensor, Tensor]:
    d = torch.cdist(memory_x.flatten(1).double(), all_lat.flatten(1).double())
    dist, idx = d.min(dim=1)
    return dist / all_lat.flatten(1).norm(dim=1).mean(), idx


# ------------------------------------------------------------------------------------------------ structure


def test_the_adapter_keeps_the_models_names_and_its_bn_layers_became_brn():
    torch.manual_seed(0)
    model = resnet18(num_classes=CLASSES, width=8, in_channels=3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    s = make_ar1(model)
    assert isinstance(s.model, LatentModel) and s.model.source is model
    assert n_bn == 20 and sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for part in (s.model.lat_features, s.model.end_features)
                   for m in part.modules())
    # the BRN layers the parts call are the model's (the swap came before the split)
    assert s.model.lat_features.bn1 is model.bn1 and s.model.end_features.fc is model.fc
    assert [n for n, _ in s.model.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert "bn1.gamma" in dict(s.model.named_parameters())
    assert list(s.state_dict()["model"]) == list(model.state_dict())
    assert s.model.output is model.fc and s.cwr.cwr_layer is model.fc and s.cwr.cwr_layer_name == "fc"
    assert s.freeze_below_layer == "layer3"


def test_the_adapter_forward_is_the_models_and_replays_after_the_current_latents():
    torch.manual_seed(0)
    model = resnet18(num_classes=CLASSES, width=8, in_channels=3).eval()
    adapted = LatentModel(model, "layer3")
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(adapted(x), model(x))
        z = _latents_by_hook(model, x)
        replay = torch.randn(3, *z.shape[1:])
        logits, lat = adapted(x, latent_input=replay, return_lat_acts=True)
        assert torch.equal(lat, z)
        # upper on the joined batch: the model with layer3's input replaced by cat(z, replay)
        hook = model.layer3.register_forward_pre_hook(lambda m, args: (torch.cat((z, replay)),))
        try:
            expected = model(torch.cat((x, x[:3])))
        finally:
            hook.remove()
        assert torch.equal(logits, expected)
        only_replay = adapted(x[:0], latent_input=replay)
        assert torch.equal(only_replay, expected[5:])


def test_models_the_adapter_refuses():
    with pytest.raises(ValueError, match="split_at"):  # MobileNetV1's forward checks its input: fx cannot trace it
        split_at(MobileNetV1(num_classes=4, width_mult=0.25), "end_features")
    linear_first = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match="not after latent_layer"):
        LatentModel(linear_first, "1")

    class SharedBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.fc = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.bn(self.a(self.bn(x))))

    with pytest.raises(ValueError, match="both sides"):
        LatentModel(SharedBN(), "a")
    in_place = LatentModel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)), "1")
    with pytest.raises(ValueError, match="in place"):
        in_place(torch.randn(3, 4), return_lat_acts=True)
    with pytest.raises(TypeError, match="latent_layer"):
        make_ar1(latent_layer=3)
    with pytest.raises(ValueError, match="needs a model"):
        AR1(latent_layer="layer3", evaluator=None)
    with pytest.raises(TypeError, match="not both"):
        make_ar1(LatentModel(resnet18(num_classes=CLASSES, width=8), "layer3"))


def test_a_latent_model_given_to_ar1_is_rebuilt_after_the_brn_swap():
    torch.manual_seed(0)
    model = resnet18(num_classes=CLASSES, width=8, in_channels=3)
    s = make_ar1(LatentModel(model, "layer4", output_layer="fc"), latent_layer=None)
    assert s.model.latent_layer == "layer4" and s.model.source is model
    assert isinstance(s.model.lat_features.bn1, BatchRenorm2d) and s.model.lat_features.bn1 is model.bn1


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("ewc_lambda", [0.0, 0.5])
def test_three_experiences_freeze_the_lower_part_from_the_second_on(ewc_lambda):
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec], ewc_lambda=ewc_lambda, train_epochs=2)
    model = s.model.source
    stream = make_stream()
    for exp in stream:
        s.train(exp)
        s.eval(stream)
    assert s.clock.train_exp_counter == 3 and s.memory.size == 12
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # §4.4: every non-norm parameter registered before layer3 frozen, nothing else
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(LOWER) and not isinstance(model.get_submodule(n.rpartition(".")[0]), BatchRenorm2d)}
    assert len(expected) == 10  # conv1, the 4 convolutions of layer1 and the 5 of layer2 (downsample included)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    # From the start of the second experience (after the BRN switch) on, the frozen parameters did not move, nor,
    # without SI, anything else of the lower part (eval mode; no gradient under replay). With SI its norm layers'
    # parameters get the penalty's gradient, so weight decay moves them, as on MobileNetV1's lat_features.
    start, end = rec.states[1], model.state_dict()
    for n in (n for n in start if n.startswith(LOWER) and (n in expected or not ewc_lambda)):
        assert torch.equal(end[n], start[n]), n
    assert any(not torch.equal(end[n], start[n]) for n in start if n.startswith("layer3"))
    assert rec.modes == {(False, True)}  # §4.5: lat_features always in eval mode, the rest trains
    if ewc_lambda:
        anchors, importance = s.si.ewc_data
        assert "fc.weight" not in anchors and "layer3.0.conv1.weight" in anchors
        assert float(importance["layer3.0.conv1.weight"].abs().sum()) > 0
    else:
        assert s.si is None


@pytest.mark.parametrize("lat_train_mode_first_exp", [False, True])
def test_memory_labels_are_the_labels_of_the_samples_whose_latents_they_are(lat_train_mode_first_exp):
    torch.manual_seed(0)
    stream = make_stream(n=20)
    # lr tiny in the first experience (unless its latents are recomputed at its end): the lower part barely moves
    s = make_ar1(lr=0.01 if lat_train_mode_first_exp else 1e-9, rm_sz=16, train_epochs=2,
                 lat_train_mode_first_exp=lat_train_mode_first_exp)
    model = s.model.source
    xs, ys = [], []
    for e, exp in enumerate(stream):
        s.train(exp)
        xs.append(exp.dataset.x)
        ys.append(exp.dataset.targets)
        dist, idx = _match(s.memory.latents, _latents_by_hook(model, torch.cat(xs)))
        assert dist.max() < 1e-4, e
        assert len(set(idx.tolist())) == s.memory.size == 16
        assert torch.equal(s.memory.labels, torch.cat(ys)[idx]), e
    assert set(s.memory.labels.tolist()) == set(range(CLASSES))


def test_cwr_star_consolidates_the_fc_layer():
    torch.manual_seed(0)
    rec = Recorder()
    s = make_ar1(plugins=[rec], rm_sz=12)
    stream = make_stream(n=10)
    fc = s.model.source.fc
    saved = torch.zeros(CLASSES, fc.in_features, dtype=torch.float64)
    past = torch.zeros(CLASSES, dtype=torch.float64)
    for e, exp in enumerate(stream):
        s.train(exp)
        # §4.8 by hand: counts of the experience plus the replayed labels, one scalar mean over the classes' rows
        cur = torch.bincount(torch.cat((exp.dataset.targets, rec.memory_labels[e])), minlength=CLASSES).double()
        classes = torch.nonzero(cur > 0).reshape(-1)
        w = rec.trained_fc[e].double()[classes]
        centred = w - w.mean()
        for i, c in enumerate(classes.tolist()):
            if past[c] > 0:
                k = torch.sqrt(past[c] / cur[c])
                saved[c] = (k * saved[c] + centred[i]) / (k + 1)
            else:
                saved[c] = centred[i]
            past[c] += cur[c]
        seen = past > 0
        torch.testing.assert_close(fc.weight.detach().double()[seen], saved[seen], rtol=1e-5, atol=1e-6)
        assert torch.equal(s.cwr.past_j.double(), past)
    assert len(rec.memory_labels[1]) == 10  # h = min(rm_sz, n) replayed labels counted in the second experience


def test_state_dict_round_trip_resumes_identically():
    stream = make_stream(n=12)
    torch.manual_seed(0)
    a = make_ar1(ewc_lambda=0.5)
    init = {k: v.clone() for k, v in a.model.state_dict().items()}
    a.train(stream[0])
    a.train(stream[1])
    sd = a.state_dict()
    assert sd["hparams"]["latent_layer"] == "layer3"
    torch.manual_seed(123)
    b = make_ar1(ewc_lambda=0.5)
    b.model.load_state_dict(init)
    b.load_state_dict(sd)
    a.train(stream[2])
    b.train(stream[2])
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="latent_layer"):
        make_ar1(latent_layer="layer4", ewc_lambda=0.5).load_state_dict(sd)


# ------------------------------------------------------------------------------- the native path as reference


def _as_plain_model(net: MobileNetV1) -> nn.Sequential:
    """The same network as a plain chain: MobileNetV1's modules under its own names, its forward's flatten."""
    return nn.Sequential(OrderedDict(lat_features=net.lat_features, end_features=net.end_features,
                                     flatten=nn.Flatten(), output=net.output))


def test_mobilenet_as_a_plain_model_split_at_end_features_trains_as_the_native_latent_form():
    """MobileNetV1 itself cannot be split (``test_models_the_adapter_refuses``), so its modules are recomposed as a
    plain ``nn.Sequential`` with the same names; AR1 over it with ``latent_layer="end_features"`` must give the
    native run bit for bit: losses, memory, every parameter and statistic."""
    torch.manual_seed(0)
    native_net = MobileNetV1(num_classes=CLASSES, width_mult=0.25)
    plain = _as_plain_model(copy.deepcopy(native_net))
    stream = make_stream(n=12, size=32)
    runs = []
    for kw in ({"model": native_net, "latent_layer": None}, {"model": plain, "latent_layer": "end_features"}):
        torch.manual_seed(1)  # AR1 seeds its generator from torch's
        rec = _LossRecorder()
        s = make_ar1(plugins=[rec], ewc_lambda=0.5, train_epochs=2, **kw)
        for exp in stream:
            s.train(exp)
        runs.append((s, rec.losses))
    (native, native_losses), (adapted, adapted_losses) = runs
    assert isinstance(adapted.model, LatentModel) and adapted.freeze_below_layer == native.freeze_below_layer
    assert native_losses == adapted_losses and len(native_losses) > 0
    assert torch.equal(native.memory.latents, adapted.memory.latents)
    assert torch.equal(native.memory.labels, adapted.memory.labels)
    ref, got = native.model.state_dict(), adapted.model.state_dict()
    assert list(ref) == list(got)
    for n, t in ref.items():
        assert torch.equal(t, got[n]), n


class _LossRecorder:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def after_training_iteration(self, strategy, **kw):
        self.losses.append(float(strategy.loss.detach()))

    def __getattr__(self, name: str):
        if name.startswith(("before_", "after_")):
            return lambda strategy, **kw: None
        raise AttributeError(name)
