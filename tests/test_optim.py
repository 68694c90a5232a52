"""clfast.optim against torch.optim: the same numbers (relative difference at most 1e-6 after 100 fp32 steps), the
same state_dict (each loads the other's), param groups, schedulers, closures, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import clfast
import clfast.optim as co
from clfast.testing.cases import max_relative_difference

STEPS = 100

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.5, maximize=True),
]
ADAM_CONFIGS = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=1e-2),
    dict(lr=1e-3, betas=(0.3, 0.9), eps=1e-6),  # beta1 < 0.5: torch's other lerp form
    dict(lr=1e-2, maximize=True, weight_decay=1e-3),
    dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1),
]
PAIRS = ([(torch.optim.SGD, co.SGD, c) for c in SGD_CONFIGS] + [(torch.optim.Adam, co.Adam, c) for c in ADAM_CONFIGS]
         + [(torch.optim.AdamW, co.AdamW, dict(lr=1e-2)),
            (torch.optim.AdamW, co.AdamW, dict(lr=1e-2, betas=(0.8, 0.99)))])


def _model(seed: int, device: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)).to(device, dtype)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int, skip_first_layer_until: int = 0,
           maximize: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    first = model[0]
    dev, dtype = first.weight.device, first.weight.dtype
    for step in range(steps):
        x = torch.randn(16, 10, generator=g).to(dev, dtype)
        y = torch.randint(0, 4, (16,), generator=g).to(dev)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (-loss if maximize else loss).backward()
        if step < skip_first_layer_until:  # the first layer has no gradient yet (None, as a frozen layer)
            first.weight.grad = first.bias.grad = None
        opt.step()



@pytest.mark.parametrize("torch_cls,clfast_cls,config", PAIRS,
                         ids=[f"{t.__name__}-{i}" for i, (t, _, _) in enumerate(PAIRS)])
def test_the_numbers_are_torch_optims(torch_cls, clfast_cls, config, device):
    reference, ours = _model(0, device), _model(0, device)
    maximize = config.get("maximize", False)  # then the objective is -loss, so training still converges
    _train(reference, torch_cls(reference.parameters(), **config), STEPS, seed=1, maximize=maximize)
    _train(ours, clfast_cls(ours.parameters(), **config), STEPS, seed=1, maximize=maximize)
    assert max_relative_difference(reference, ours) <= 1e-6


@pytest.mark.parametrize("torch_cls,clfast_cls,config", [PAIRS[4], PAIRS[7], PAIRS[-1]], ids=["sgd", "adam", "adamw"])
def test_param_groups_and_params_that_start_without_a_gradient(torch_cls, clfast_cls, config, device):
    """Two groups with their own hyper-parameters; the first layer has no gradient for 5 steps, so its state starts
    later (SGD's first momentum step, Adam's step count) than the others'."""
    def groups(model):
        return [{"params": model[0].parameters(), "lr": config["lr"] * 0.5},
                {"params": list(model[2].parameters()) + list(model[4].parameters())}]
    reference, ours = _model(2, device), _model(2, device)
    opt_ref, opt = torch_cls(groups(reference), **config), clfast_cls(groups(ours), **config)
    _train(reference, opt_ref, 30, seed=3, skip_first_layer_until=5)
    _train(ours, opt, 30, seed=3, skip_first_layer_until=5)
    assert max_relative_difference(reference, ours) <= 1e-6
    if "step" in opt_ref.state[reference[0].weight]:
        assert opt.state[ours[0].weight]["step"].item() == opt_ref.state[reference[0].weight]["step"].item() == 25
        assert opt.state[ours[2].weight]["step"].item() == 30


@pytest.mark.parametrize("torch_cls,clfast_cls,config", [PAIRS[4], PAIRS[7]], ids=["sgd", "adam"])
def test_each_loads_the_others_state_dict_and_training_goes_on_the_same(torch_cls, clfast_cls, config, device):
    start = _model(4, device)
    reference, ours, back = (copy.deepcopy(start) for _ in range(3))
    opt_ref = torch_cls(reference.parameters(), **config)
    _train(reference, opt_ref, 20, seed=5)
    ours.load_state_dict(reference.state_dict())
    opt = clfast_cls(ours.parameters(), **config)
    opt.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # torch's format, into the flat buffers
    _train(reference, opt_ref, 20, seed=6)
    _train(ours, opt, 20, seed=6)
    assert max_relative_difference(reference, ours) <= 1e-6
    back.load_state_dict(ours.state_dict())  # and ours back into torch
    opt_back = torch_cls(back.parameters(), **config)
    opt_back.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(back, opt_back, 10, seed=7)
    _train(ours, opt, 10, seed=7)
    assert max_relative_difference(back, ours) <= 1e-6


def test_the_state_tensors_are_views_of_one_flat_buffer_per_group_and_kind():
    model = _model(0, "cpu")
    opt = co.Adam(model.parameters(), lr=1e-3)
    _train(model, opt, 2, seed=0)
    for kind in ("exp_avg", "exp_avg_sq"):
        bases = {opt.state[p][kind].untyped_storage().data_ptr() for p in model.parameters()}
        assert len(bases) == 1
        flat = opt._buffers(opt.param_groups[0])[kind]
        assert flat.numel() == sum(p.numel() for p in model.parameters())
        assert torch.equal(flat[:240], opt.state[model[0].weight][kind].reshape(-1))


def test_a_scheduler_and_a_closure_work_as_with_torch():
    reference, ours = _model(8, "cpu"), _model(8, "cpu")
    opts = [torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9),
            co.SGD(ours.parameters(), lr=0.1, momentum=0.9)]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in opts]
    g = torch.Generator().manual_seed(9)
    for _ in range(10):
        x, y = torch.randn(8, 10, generator=g), torch.randint(0, 4, (8,), generator=g)
        losses = []
        for model, opt, sched in zip((reference, ours), opts, scheds, strict=True):
            def closure(model=model, opt=opt, x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            losses.append(opt.step(closure))
            sched.step()
        torch.testing.assert_close(losses[0], losses[1])
    assert opts[1].param_groups[0]["lr"] == opts[0].param_groups[0]["lr"] == 0.1 * 0.5**3
    assert max_relative_difference(reference, ours) <= 1e-6


def test_float64_params_keep_float64_state_and_low_precision_params_get_float32_state():
    model = _model(0, "cpu", torch.float64)
    opt = co.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, 1, seed=0)
    assert opt.state[model[0].weight]["momentum_buffer"].dtype == torch.float64
    half = _model(0, "cpu", torch.bfloat16)
    reference = copy.deepcopy(half).float()
    opt = co.Adam(half.parameters(), lr=1e-2)
    _train(half, opt, 3, seed=0)
    _train(reference, torch.optim.Adam(reference.parameters(), lr=1e-2), 3, seed=0)
    assert opt.state[half[0].weight]["exp_avg"].dtype == torch.float32
    for p, q in zip(half.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.float(), q, atol=3e-2, rtol=2e-2)  # bf16 steps track the fp32 run


def test_the_penalty_inside_the_step_is_the_penalty_gradient_then_the_step():
    """sgd_step_/adam_step_ with Ω, θ*, λ equal quad_penalty_grad_ into .grad followed by torch.optim's step, over
    50 steps; the returned value is the penalty at the parameters before each step."""
    for torch_cls, step_op in ((torch.optim.SGD, "sgd"), (torch.optim.Adam, "adam")):
        reference, ours = _model(5, "cpu"), _model(5, "cpu")
        params_ref, params = list(reference.parameters()), list(ours.parameters())
        total = sum(p.numel() for p in params)
        gen = torch.Generator().manual_seed(11)
        omega, anchor = torch.rand(total, generator=gen), torch.randn(total, generator=gen) * 0.1
        kw = dict(lr=0.05, momentum=0.9) if step_op == "sgd" else dict(lr=1e-2)
        opt_ref = torch_cls(params_ref, **kw)
        buffers = [torch.zeros(total) for _ in range(2)]
        g = torch.Generator().manual_seed(12)
        for step in range(50):
            x, y = torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)
            for model in (reference, ours):
                model.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
            expected_value = clfast.ops.quad_penalty_grad_(params_ref, omega, anchor, 0.3)
            opt_ref.step()
            grads = [p.grad for p in params]
            if step_op == "sgd":
                value = clfast.ops.sgd_step_(params, grads, buffers[0], lr=0.05, momentum=0.9, first=step == 0,
                                             importance=omega, anchor=anchor, lam=0.3)
            else:
                value = clfast.ops.adam_step_(params, grads, *buffers, lr=1e-2, step=step + 1, importance=omega,
                                              anchor=anchor, lam=0.3)
            torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=0)
        assert max_relative_difference(reference, ours) <= 1e-6, step_op


def test_bad_arguments_are_named():
    params = list(_model(0, "cpu").parameters())
    with pytest.raises(ValueError, match="lr must be in"):
        co.SGD(params, lr=-0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        co.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="amsgrad=True is not supported"):
        co.Adam(params, amsgrad=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in"):
        co.Adam(params, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="betas must be a pair"):
        co.Adam(params, betas=0.9)
    strided = nn.Parameter(torch.randn(6, 4).t())
    strided.grad = torch.randn(4, 6)
    with pytest.raises(ValueError, match="not contiguous"):
        co.SGD([strided], lr=0.1).step()
    sparse = nn.Parameter(torch.randn(5))
    sparse.grad = torch.randn(5).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        co.Adam([sparse]).step()
    with pytest.raises(RuntimeError, match="momentum_buffer must be given exactly when momentum != 0"):
        clfast.ops.sgd_step_(params, [p.detach() for p in params], None, lr=0.1, momentum=0.9)
    with pytest.raises(RuntimeError, match="importance and anchor go together"):
        clfast.ops.sgd_step_(params, [torch.zeros_like(p) for p in params], None, lr=0.1,
                             importance=torch.zeros(sum(p.numel() for p in params)))


def test_a_gradient_that_is_its_parameter_is_refused_and_nothing_moves():
    p = torch.randn(6)
    before = p.clone()
    with pytest.raises(RuntimeError, match=r"params\[0\] and grads\[0\] must be different buffers"):
        clfast.ops.sgd_step_([p], [p], None, lr=0.1)
    assert torch.equal(p, before)


def test_a_step_with_a_path_integral_returns_the_penalty_bit_for_bit_and_integrates_the_path():
    """The CPU driver sums the penalty apart when a path integral rides in the step (cpu.cpp, in blocks of 2048): the
    value equals the step's without the path integral bit for bit, over pieces longer than a block, and the path
    integral equals path_integral_update_ after the same step."""
    g = torch.Generator().manual_seed(3)
    shapes = [(70, 80), (5001,), (3,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    n = sum(p.numel() for p in params)
    importance, anchor, buffer = torch.rand(n, generator=g), torch.randn(n, generator=g), torch.randn(n, generator=g)
    lam = 0.7
    plain = [p.clone() for p in params]
    value = clfast.ops.sgd_step_(plain, grads, buffer.clone(), lr=0.1, momentum=0.9, importance=importance,
                                 anchor=anchor, lam=lam)
    fused = [p.clone() for p in params]
    acc, prev = torch.randn(n, generator=g), torch.cat([p.reshape(-1) for p in params])
    acc_fused, prev_fused = acc.clone(), prev.clone()
    fused_value = clfast.ops.sgd_step_(fused, grads, buffer.clone(), lr=0.1, momentum=0.9, importance=importance,
                                       anchor=anchor, lam=lam, path_acc=acc_fused, path_prev=prev_fused,
                                       path_penalised=True)
    assert torch.equal(value, fused_value)
    assert all(torch.equal(a, b) for a, b in zip(plain, fused, strict=True))
    # The unfused order: the penalised gradient g + 2λΩ⊙(θ−θ*) in .grad, the step, then the path integral over it.
    offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0).tolist()
    penalised = [gr + 2 * lam * importance[a:b].view_as(p) * (p - anchor[a:b].view_as(p))
                 for gr, p, a, b in zip(grads, params, offsets[:-1], offsets[1:], strict=True)]
    acc_unfused = acc.clone()
    clfast.ops.path_integral_update_(acc_unfused, prev.clone(), fused, grads=penalised)
    torch.testing.assert_close(acc_fused, acc_unfused, rtol=1e-5, atol=1e-6)
    assert torch.equal(prev_fused, torch.cat([p.reshape(-1) for p in fused]))
