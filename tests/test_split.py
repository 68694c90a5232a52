"""``split_at``: ``upper(lower(x))`` is ``model(x)`` bit for bit (outputs, BN statistics, gradients), ``lower(x)``
is the input that the named module receives in ``model(x)`` (caught by a forward pre-hook on an untouched copy,
the independent reference), both parts hold the model's own parameters, and every model that is not a chain
at the split point is refused with a ValueError that names the module and the reason."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from clfast.nn import replace_bn_with_brn, split_at
from clfast.testing.resnet import resnet18
from clfast.testing.vit import TinyViT

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(model: nn.Module, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """``model(x)`` and the input its module ``name`` receives there (cloned: an in-place module may change it)."""
    seen: list[Tensor] = []
    hook = model.get_submodule(name).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        out = model(x)
    finally:
        hook.remove()
    assert len(seen) == 1
    return out, seen[0]


def _check_split(model: nn.Module, name: str, x: Tensor, *, train: bool) -> tuple[nn.Module, nn.Module]:
    """Split ``model`` and compare it with an unsplit copy: latent, output, state and gradients, bitwise."""
    model.train(train)
    ref = copy.deepcopy(model)
    expected, latent = _reference(ref, name, x)
    lower, upper = split_at(model, name)
    z = lower(x)
    assert torch.equal(z, latent)
    out = upper(z)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    ref_state, state = ref.state_dict(), model.state_dict()  # BN running statistics moved the same way
    assert list(ref_state) == list(state)
    assert all(torch.equal(ref_state[k], state[k]) for k in state)
    weight = torch.randn_like(out)
    (expected * weight).sum().backward()
    (out * weight).sum().backward()
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert (p.grad is None) == (ref_params[n].grad is None), n
        assert p.grad is None or torch.equal(p.grad, ref_params[n].grad), n
    own = dict(model.named_parameters())
    for part in (lower, upper):  # the parts hold the model's parameter objects, under the model's names
        assert all(own[n] is p for n, p in part.named_parameters())
    return lower, upper


def _called(part: nn.Module) -> list[str]:
    return [n.target for n in part.graph.nodes if n.op == "call_module"]


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


# -- chains that split ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("index", range(6))
def test_sequential_at_every_child(index: int, train: bool) -> None:
    torch.manual_seed(index)
    model, x = _mlp(), torch.randn(5, 6)
    lower, upper = _check_split(model, str(index), x, train=train)
    names = [str(i) for i in range(6)]
    assert _called(lower) == names[:index] and _called(upper) == names[index:]
    if index == 0:  # the first module: the lower part is the identity
        assert lower(x) is x
    ids = {id(p) for part in (lower, upper) for p in part.parameters()}
    assert ids == {id(p) for p in model.parameters()}
    assert not {id(p) for p in lower.parameters()} & {id(p) for p in upper.parameters()}


@pytest.mark.parametrize("name", ["1", "1.0", "1.1", "1.1.0", "1.1.2", "2"])
def test_nested_sequential(name: str) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.ReLU(), nn.Sequential(nn.Linear(6, 6), nn.Tanh(),
                                                                                    nn.Linear(6, 5))), nn.Linear(5, 2))
    _check_split(model, name, torch.randn(3, 4), train=True)


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(self.a(x))))


class _Net(nn.Module):
    """A straight chain of children with functional ops in between and a straight-chain child."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body, self.head = nn.Conv2d(3, 4, 3), _Chain(), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: Tensor, scale: float = 2.0, extra: Tensor | None = None) -> Tensor:
        if extra is not None:
            x = x + extra
        return self.head(torch.flatten(self.body(self.stem(x) * scale), 1))


@pytest.mark.parametrize("name", ["stem", "body", "body.a", "body.b", "body.c", "head"])
def test_straight_chain_submodule(name: str) -> None:
    torch.manual_seed(2)
    _check_split(_Net(), name, torch.randn(2, 3, 6, 6), train=True)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(5, 5), nn.GELU()) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _WithEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = _Encoder(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@pytest.mark.parametrize("name", ["encoder.layers.0", "encoder.layers.2", "encoder.layers.2.1", "head"])
def test_a_chain_through_a_module_list(name: str) -> None:
    torch.manual_seed(13)
    _check_split(_WithEncoder(), name, torch.randn(4, 5), train=True)


def test_defaulted_arguments_are_fixed_and_lower_takes_the_rest() -> None:
    torch.manual_seed(3)
    model, x = _Net(), torch.randn(2, 3, 6, 6)
    lower, upper = split_at(model, "body.b")
    assert [n.target for n in lower.graph.nodes if n.op == "placeholder"] == ["x"]
    assert torch.equal(upper(lower(x)), model(x))
    assert not torch.equal(upper(lower(x)), model(x, scale=3.0))


@pytest.mark.parametrize("name", ["conv1", "relu", "layer1", "layer2.1", "layer3", "layer3.1.conv1", "avgpool", "fc"])
def test_resnet18_eval(name: str) -> None:
    torch.manual_seed(4)
    _check_split(resnet18(num_classes=5, width=4), name, torch.randn(2, 3, 16, 16), train=False)


@pytest.mark.parametrize("name", ["layer2.1", "layer3", "fc"])
def test_resnet18_train_moves_bn_statistics_alike(name: str) -> None:
    torch.manual_seed(5)
    lower, upper = _check_split(resnet18(num_classes=5, width=4), name, torch.randn(3, 3, 16, 16), train=True)
    if name == "layer3":
        assert _called(lower)[-2:] == ["layer1", "layer2"] and _called(upper) == ["layer3", "layer4", "avgpool", "fc"]
        assert {n for n, _ in lower.named_parameters()} == {n for n, _ in resnet18(width=4).named_parameters()
                                                            if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}}


def test_resnet18_with_batch_renorm() -> None:
    torch.manual_seed(6)
    model = replace_bn_with_brn(resnet18(num_classes=5, width=4), momentum=0.3)
    _check_split(model, "layer3", torch.randn(3, 3, 16, 16), train=True)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", ["patch_embed", "encoder.0", "encoder.2", "encoder.1.norm2", "norm", "head"])
def test_vit(name: str, train: bool) -> None:
    torch.manual_seed(7)
    _, upper = _check_split(TinyViT(), name, torch.randn(3, 3, 16, 16), train=train)
    if name == "encoder.2":
        assert _called(upper) == ["encoder.2", "encoder.3", "norm", "head"]


def test_the_input_of_the_split_point_may_be_used_again_after_it() -> None:
    # Inside a pre-norm block, x + mlp(norm2(x)) split at norm2: the upper part has x, it is its input.
    torch.manual_seed(8)
    model = TinyViT(depth=2)
    lower, upper = split_at(model, "encoder.1.norm2")
    x = torch.randn(2, 3, 16, 16)
    z = lower(x)
    adds = [n for n in upper.graph.nodes if n.op == "call_function" and n.target.__name__ == "add"]
    assert any(upper.graph.find_nodes(op="placeholder")[0] in n.args for n in adds)
    assert torch.equal(upper(z), model(x))


class _Scaled(nn.Module):
    """One parameter read on both sides of the split (torch.fx records a single read of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x) * self.w) * self.w[:2]


def test_an_attribute_read_on_both_sides_is_read_again_by_the_upper_part() -> None:
    torch.manual_seed(11)
    model = _Scaled()
    lower, upper = _check_split(model, "b", torch.randn(3, 4), train=True)
    assert lower.w is model.w and upper.w is model.w


class _Probe(nn.Module):
    """A module called before the split whose output nothing uses: in train mode it still moves BN statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.probe, self.b = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        self.probe(h)
        return self.b(h)


def test_a_call_whose_output_is_unused_stays_in_its_part() -> None:
    torch.manual_seed(12)
    lower, _ = _check_split(_Probe(), "b", torch.randn(5, 4), train=True)
    assert _called(lower) == ["a", "probe"]


# -- models that do not split there ---------------------------------------------------------------------------


class _Pieces(nn.Module):
    """Children a, b, c, d; ``kind`` picks a forward that is not a chain at some of them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))
        self.pair = nn.Bilinear(4, 4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.kind == "skip":
            return self.d(self.c(self.b(h)) + h)
        if self.kind == "input_after":
            return self.c(self.b(h)) * x
        if self.kind == "functional":
            s = h.mean()
            return self.c(self.b(h)) - s
        if self.kind == "twice":
            return self.c(self.b(self.b(h)))
        if self.kind == "pair":
            return self.c(self.pair(h, self.b(h)))
        if self.kind == "data":
            return self.b(h) if h.sum() > 0 else self.c(h)
        if self.kind == "mode":
            return self.c(self.b(h) * 0.5 if self.training else self.b(h))
        raise AssertionError(self.kind)


@pytest.mark.parametrize(("kind", "name", "message"), [
    ("skip", "c", r"skip connection across the split point: the output of module 'a' comes before 'c'"),
    ("input_after", "b", r"a model input is used after the split point: the forward argument 'x'"),
    ("functional", "b", r"skip connection .*the output of method \.mean\(\) comes before 'b'"),
    ("twice", "b", r"'b'.*calls it 2 times"),
    ("pair", "pair", r"'pair'.*called with 2 computed inputs"),
    ("data", "b", r"'b': torch\.fx cannot trace the forward of the model \(_Pieces\) \(TraceError"),
    ("mode", "c", r"'c'.*branches on self\.training"),
    ("mode", "a", r"'a'.*branches on self\.training"),  # wherever the branch is: the graph would freeze it
    ("skip", "unused", r"'unused'.*never calls it"),
])
def test_not_a_chain_at_the_split_point(kind: str, name: str, message: str) -> None:
    model = _Pieces(kind)
    with pytest.raises(ValueError, match=message) as err:
        split_at(model, name)
    assert err.value.args[0].startswith(f"split_at: cannot split _Pieces at {name!r}")


@pytest.mark.parametrize(("kind", "name"), [("skip", "a"), ("skip", "b"), ("functional", "a"), ("pair", "c"),
                                            ("input_after", "a"), ("twice", "c")])
def test_the_same_models_split_where_they_are_chains(kind: str, name: str) -> None:
    torch.manual_seed(9)
    model, x = _Pieces(kind), torch.randn(3, 4)
    lower, upper = split_at(model, name)
    assert torch.equal(upper(lower(x)), model(x))


def test_resnet_inside_a_block_after_its_first_module_is_a_skip() -> None:
    with pytest.raises(ValueError, match=r"'layer3\.1\.bn1'.*skip connection.*module 'layer3\.0'"):
        split_at(resnet18(width=4), "layer3.1.bn1")
    with pytest.raises(ValueError, match=r"'encoder\.1\.mlp'.*skip connection"):
        split_at(TinyViT(), "encoder.1.mlp")


def test_unknown_names_list_existing_ones() -> None:
    model = resnet18(width=4)
    with pytest.raises(ValueError, match=r"no module 'layer5'.*close matches: 'layer4'.*top-level modules: 'conv1'"):
        split_at(model, "layer5")
    with pytest.raises(ValueError, match=r"no module 'layer3\.7' \('layer3' has no child '7'\).*'layer3\.1'"):
        split_at(model, "layer3.7")
    with pytest.raises(ValueError, match=r"no module 'layer3\.0\.conv1\.weight'"):  # a parameter, not a module
        split_at(model, "layer3.0.conv1.weight")
    with pytest.raises(ValueError, match=r"not the model itself"):
        split_at(model, "")
    with pytest.raises(TypeError, match="name must be"):
        split_at(model, 3)
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        split_at(lambda x: x, "fc")


def test_hooks_on_a_traced_module_are_refused_and_on_a_called_one_kept() -> None:
    torch.manual_seed(10)
    model, x = _mlp().eval(), torch.randn(2, 6)
    handle = model.register_forward_hook(lambda m, args, out: out * 2)
    with pytest.raises(ValueError, match=r"at '3': the model \(Sequential\), traced through to reach it, has hooks"):
        split_at(model, "3")
    handle.remove()
    model[4].register_forward_hook(lambda m, args, out: out + 1)
    lower, upper = split_at(model, "3")
    assert torch.equal(upper(lower(x)), model(x))
