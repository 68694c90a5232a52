"""Batch Renormalization: the fused ops and clfast.nn.BatchRenorm2d against Avalanche's formula (§5)."""

from __future__ import annotations

import copy
import io
import zlib

import pytest
import torch
from torch import nn

import clfast.ops as ops
from clfast import _reference as ref
from clfast.nn import BatchRenorm1d, BatchRenorm2d, change_brn_pars, replace_bn_with_brn
from clfast.testing.avalanche import AvalancheBatchRenorm2D
from clfast.testing.cases import DEVICES, brn_tol, make_brn_case

ACT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STAT_DTYPES = [torch.float32, torch.float64]
# NCHW shapes (several sizes, odd spatial extents, a batch of one, a 1x1 map), 2-d and 3-d inputs.
SHAPES = [(4, 3, 5, 5), (2, 16, 7, 3), (1, 8, 6, 4), (5, 6, 1, 1), (8, 5), (3, 4, 9), (64, 40, 2, 2)]
LAYOUTS = ["nchw", "channels_last", "strided"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # neither NCHW- nor channels-last-contiguous: a slice of a bigger tensor
        big = torch.zeros(x.shape[0], x.shape[1] * 2, *x.shape[2:], dtype=x.dtype, device=x.device)
        big[:, ::2] = x
        return big[:, ::2]
    return x.contiguous()


def _reference_train(x, p, r_max, d_max, eps, grad_y):
    """Avalanche's formula in float64 eager ops, with its autograd as the reference backward."""
    xd = x.detach().double().requires_grad_()
    wd, bd = (p[k].detach().double().requires_grad_() for k in "wb")
    y, mean, std, r, d = ref.batch_renorm_forward(xd, wd, bd, p["rm"].double(), p["rs"].double(), r_max, d_max, eps)
    y.backward(grad_y.double())
    return y.detach(), mean.detach(), std.detach(), r, d, xd.grad, wd.grad, bd.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stat_dtype", STAT_DTYPES)
@pytest.mark.parametrize("act_dtype", ACT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_forward_and_backward_match_the_reference(shape, act_dtype, stat_dtype, layout, device):
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels-last is a 4-d layout")
    seed = zlib.crc32(repr((shape, layout)).encode()) % 1000
    x, p = make_brn_case(shape, act_dtype, stat_dtype, seed=seed, device=device)
    x = _layout(x, layout)
    r_max, d_max, eps = 1.5, 0.3, 1e-5
    rmax_t = torch.tensor(r_max, dtype=stat_dtype, device=device)
    dmax_t = torch.tensor(d_max, dtype=stat_dtype, device=device)
    xg = x.detach().clone().requires_grad_()
    xg_in = _layout(xg, layout) if layout != "strided" else xg
    w, b = (p[k].clone().requires_grad_() for k in "wb")
    y, mean, std, r, d = ops.batch_renorm_forward(xg_in, w, b, p["rm"], p["rs"], rmax_t, dmax_t, eps)
    grad_y = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(act_dtype).to(device)
    y.backward(grad_y)
    ry, rmean, rstd, rr, rd, rgx, rgw, rgb = _reference_train(x.cpu(), {k: v.cpu() for k, v in p.items()}, r_max,
                                                              d_max, eps, grad_y.cpu())
    tol = brn_tol(act_dtype, stat_dtype)
    stat_tol = tol if act_dtype in (torch.float32, torch.float64) else {"rtol": 1e-5, "atol": 1e-5}
    assert y.dtype == act_dtype and mean.dtype == stat_dtype and y.shape == x.shape
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    # The kernels see the low-precision input exactly; compare the statistics of that input.
    torch.testing.assert_close(mean.cpu().double(), rmean, **stat_tol)
    torch.testing.assert_close(std.cpu().double(), rstd, **stat_tol)
    torch.testing.assert_close(r.cpu().double(), rr, **stat_tol)
    torch.testing.assert_close(d.cpu().double(), rd, **stat_tol)
    torch.testing.assert_close(y.cpu().double(), ry, **tol)
    torch.testing.assert_close(xg.grad.cpu().double(), rgx, **tol)
    grad_tol = {"rtol": tol["rtol"], "atol": tol["atol"] * max(1.0, x.numel() / x.shape[1] / 16)}
    torch.testing.assert_close(w.grad.cpu().double(), rgw, **grad_tol)
    torch.testing.assert_close(b.grad.cpu().double(), rgb, **grad_tol)
    # The clamps were exercised (see make_brn_case).
    assert rr[0].item() == pytest.approx(r_max) and rd[-1].item() == pytest.approx(-d_max)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act_dtype", ACT_DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 7), (2, 5, 11)], ids=str)
def test_eval_forward_and_backward_match_the_reference(shape, act_dtype, layout, device):
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels-last is a 4-d layout")
    x, p = make_brn_case(shape, act_dtype, torch.float32, seed=11, device=device)
    x = _layout(x, layout).requires_grad_()
    w, b = (p[k].clone().requires_grad_() for k in "wb")
    y = ops.batch_renorm_eval(x, w, b, p["rm"], p["rs"])
    gy = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(act_dtype).to(device)
    y.backward(gy)
    xd = x.detach().cpu().double().requires_grad_()
    wd, bd = (p[k].detach().cpu().double().requires_grad_() for k in "wb")
    yr = ref.batch_renorm_eval(xd, wd, bd, p["rm"].cpu().double(), p["rs"].cpu().double())
    yr.backward(gy.cpu().double())
    tol = brn_tol(act_dtype, torch.float32)
    torch.testing.assert_close(y.detach().cpu().double(), yr.detach(), **tol)
    torch.testing.assert_close(x.grad.cpu().double(), xd.grad, **tol)
    torch.testing.assert_close(w.grad.cpu().double(), wd.grad, rtol=tol["rtol"], atol=tol["atol"] * 10)
    torch.testing.assert_close(b.grad.cpu().double(), bd.grad, rtol=tol["rtol"], atol=tol["atol"] * 10)


@pytest.mark.parametrize("device", DEVICES)
def test_update_op_matches_the_reference_and_ramps_like_avalanche(device):
    g = torch.Generator().manual_seed(3)
    rm, rs = torch.randn(5, generator=g).to(device), (torch.rand(5, generator=g) + 0.5).to(device)
    bm, bs = torch.randn(5, generator=g).to(device), (torch.rand(5, generator=g) + 0.5).to(device)
    r_max, d_max = torch.tensor(2.95, device=device), torch.tensor(5.0, device=device)
    exp = ref.batch_renorm_update(rm, rs, 2.95, 5.0, bm, bs, 0.01, 0.1, 0.1, 3.0, 5.0)
    ops.batch_renorm_update_(rm, rs, r_max, d_max, bm, bs, 0.01, 0.1, 0.1, 3.0, 5.0)
    torch.testing.assert_close(rm, exp[0])
    torch.testing.assert_close(rs, exp[1])
    assert r_max.item() == pytest.approx(3.05)  # below the maximum: grows, overshooting by < one step
    assert d_max.item() == 5.0  # at the maximum: unchanged
    ops.batch_renorm_update_(rm, rs, r_max, d_max, bm, bs, 0.01, 0.1, 0.1, 3.0, 5.0)
    assert r_max.item() == pytest.approx(3.05)


@pytest.mark.parametrize("saturate", ["r_one_d_zero", "r_at_max_d_at_max"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_float64(saturate, layout):
    # Finite differences see r and d move unless their clamps hold them constant: saturate both.
    x, p = make_brn_case((3, 4, 3, 2), torch.float64, torch.float64, seed=5)
    if saturate == "r_one_d_zero":
        r_max, d_max = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    else:
        r_max, d_max = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
        p["rs"] = torch.full_like(p["rs"], 1e-3)  # σ_B/σ_run >> r_max and |μ_B − μ_run|/σ_run >> d_max
    x = _layout(x, layout).requires_grad_()
    w, b = (p[k].clone().requires_grad_() for k in "wb")

    def f(x, w, b):
        return ops.batch_renorm_forward(x, w, b, p["rm"], p["rs"], r_max, d_max, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_renorm_eval(x, w, b, p["rm"], p["rs"]), (x, w, b))


# ---- the module ------------------------------------------------------------------------------------


def test_module_follows_avalanche_over_training_steps_then_eval():
    torch.manual_seed(0)
    kw = {"momentum": 0.2, "r_d_max_inc_step": 0.02, "max_r_max": 1.5, "max_d_max": 0.4}
    ours = BatchRenorm2d(6, **kw).double()
    theirs = AvalancheBatchRenorm2D(6, momentum=0.2, step=0.02, max_r_max=1.5, max_d_max=0.4).double()
    theirs.running_avg_mean, theirs.running_avg_std = theirs.running_avg_mean.double(), theirs.running_avg_std.double()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for step in range(12):
        x = torch.randn(5, 6, 4, 3, dtype=torch.float64) * (1 + step % 3) + step * 0.1
        target = torch.randn(5, 6, 4, 3, dtype=torch.float64)
        for model, opt in ((ours, opt_a), (theirs, opt_b)):
            opt.zero_grad()
            ((model(x) - target) ** 2).mean().backward()
            opt.step()
        torch.testing.assert_close(ours.running_avg_mean, theirs.running_avg_mean)
        torch.testing.assert_close(ours.running_avg_std, theirs.running_avg_std)
        assert ours.r_max.item() == pytest.approx(theirs.r_max)
        assert ours.d_max.item() == pytest.approx(theirs.d_max)
        torch.testing.assert_close(ours.gamma, theirs.gamma)
        torch.testing.assert_close(ours.beta, theirs.beta)
    assert ours.r_max.item() >= 1.5 and ours.d_max.item() >= 0.4  # both ramps reached their tops
    ours.eval()
    theirs.eval()
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))


def test_ramp_counts_samples_including_the_batch_size():
    m = BatchRenorm2d(2, r_d_max_inc_step=1e-3, max_r_max=1.05, max_d_max=0.02)
    expected_r, expected_d = 1.0, 0.0
    for n in (4, 7, 16, 16, 30):
        m(torch.randn(n, 2, 3, 3))
        expected_r = expected_r + 1e-3 * n if expected_r < 1.05 else expected_r
        expected_d = expected_d + 1e-3 * n if expected_d < 0.02 else expected_d
        assert m.r_max.item() == pytest.approx(expected_r, abs=1e-6)
        assert m.d_max.item() == pytest.approx(expected_d, abs=1e-6)
    assert m.r_max.item() > 1.05 and m.d_max.item() > 0.02  # both ramps stopped, one step past the top


def test_buffers_are_saved_loaded_and_moved():
    torch.manual_seed(1)
    m = BatchRenorm2d(4, r_d_max_inc_step=0.01)
    for _ in range(5):
        m(torch.randn(8, 4, 3, 3) * 3 + 2)
    sd = m.state_dict()
    assert set(sd) == {"gamma", "beta", "running_avg_mean", "running_avg_std", "r_max", "d_max"}
    assert sd["gamma"].shape == (1, 4, 1, 1)  # Avalanche's parameter names and shapes
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = BatchRenorm2d(4, r_d_max_inc_step=0.01)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(6, 4, 3, 3)
    m.eval()
    fresh.eval()
    assert torch.equal(m(x), fresh(x))
    m.train()
    fresh.train()
    assert torch.equal(m(x), fresh(x))
    assert torch.equal(m.running_avg_std, fresh.running_avg_std) and torch.equal(m.r_max, fresh.r_max)
    d = copy.deepcopy(m).double()
    assert all(b.dtype == torch.float64 for b in d.buffers())


def test_fresh_layer_is_finite_in_eval_and_on_hard_batches():
    m = BatchRenorm2d(3)
    m.eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(m(x), x)  # mean 0, std 1, γ 1, β 0: the identity (Avalanche: division by zero)
    m.train()
    one = m(torch.randn(1, 3, 1, 1))  # one element per channel: zero variance
    assert torch.isfinite(one).all()
    const = torch.randn(4, 3, 5, 5)
    const[:, 1] = 7.25  # a constant channel
    d_max = m.d_max.item()  # 1e-4: the ramp moved by one sample
    y = m(const)
    assert torch.isfinite(y).all() and torch.isfinite(m.running_avg_std).all()
    # x − μ_B = 0 and μ_B far above μ_run: y = γ d + β with d clamped to +d_max
    torch.testing.assert_close(y[:, 1], torch.full_like(y[:, 1], d_max))


def test_batchnorm_conversion_gives_the_batchnorms_eval_outputs():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, eps=1e-3)),
                          nn.ModuleList([nn.BatchNorm2d(4)]))
    model.train()
    for _ in range(10):  # move the statistics away from their initial values
        h = model[3](model[2](model[1](model[0](torch.randn(16, 3, 8, 8) * 2 + 1))))
        model[4][0](h)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    expected = model[3](model[2](model[1](model[0](x))))
    names = [n for n, _ in model.named_parameters()]
    converted = replace_bn_with_brn(copy.deepcopy(model), momentum=0.01, r_d_max_inc_step=4.1e-5, max_r_max=1.25,
                                    max_d_max=0.5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    brns = [m for m in converted.modules() if isinstance(m, BatchRenorm2d)]
    assert len(brns) == 3 and brns[1].eps == 1e-3 and brns[0].momentum == 0.01 and brns[0].max_r_max == 1.25
    bn_names = {"1", "3.1", "4.0"}
    renamed = [n.rsplit(".", 1)[0] + {"weight": ".gamma", "bias": ".beta"}[n.rsplit(".", 1)[1]]
               if n.rsplit(".", 1)[0] in bn_names else n for n in names]
    assert [n for n, _ in converted.named_parameters()] == renamed  # layer names kept; BN weight/bias -> gamma/beta
    got = converted[3](converted[2](converted[1](converted[0](x))))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not converted.training and not brns[0].training  # the BN's mode is kept


def test_change_brn_pars_sets_the_buffers_and_both_ramps():
    model = replace_bn_with_brn(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), momentum=0.01)
    change_brn_pars(model, momentum=5e-5, r_d_max_inc_step=0.0, r_max=1.25, d_max=0.5)
    brn = model[1]
    assert brn.momentum == 5e-5 and brn.r_max_inc_step == 0.0 and brn.d_max_inc_step == 0.0
    assert brn.r_max.item() == 1.25 and brn.d_max.item() == 0.5
    assert dict(model.named_buffers())["1.r_max"] is brn.r_max
    model(torch.randn(4, 1, 3, 3))
    assert brn.r_max.item() == 1.25 and brn.d_max.item() == 0.5  # step 0: frozen limits
    with pytest.raises(ValueError, match="r_max must be in"):
        change_brn_pars(model, r_max=0.5)


def test_batchrenorm1d_matches_the_reference():
    torch.manual_seed(3)
    for shape in [(7, 5), (4, 5, 6)]:
        m = BatchRenorm1d(5, r_max=1.2, d_max=0.1).double()
        x = torch.randn(shape, dtype=torch.float64)
        y = m(x)
        ry = ref.batch_renorm_forward(x, torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                                      torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64),
                                      1.2, 0.1, 1e-5)[0]
        torch.testing.assert_close(y, ry)


def test_bad_input_is_named():
    m = BatchRenorm2d(3)
    with pytest.raises(ValueError, match=r"BatchRenorm2d\(3\) got an input with 4 channels"):
        m(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="expects 4-d input"):
        m(torch.randn(2, 3, 3))
    with pytest.raises(TypeError, match="floating-point input"):
        m(torch.ones(2, 3, 3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        copy.deepcopy(m).half()(torch.randn(2, 3, 3, 3).half())
    with pytest.raises(ValueError, match="momentum must be in"):
        BatchRenorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match="num_features"):
        BatchRenorm2d(0)
    with pytest.raises(ValueError, match="gamma has 2 elements"):
        BatchRenorm2d(3, gamma=torch.ones(2))
    w, b, rm, rs = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
    one = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="input is empty"):
        ops.batch_renorm_forward(torch.randn(0, 3, 2, 2), w, b, rm, rs, one, one, 1e-5)
    with pytest.raises(RuntimeError, match="running_std must have 3 elements"):
        ops.batch_renorm_forward(torch.randn(2, 3, 2, 2), w, b, rm, torch.ones(4), one, one, 1e-5)
    with pytest.raises(RuntimeError, match="bias has dtype Double"):
        ops.batch_renorm_eval(torch.randn(2, 3, 2, 2), w, b.double(), rm, rs)
    with pytest.raises(RuntimeError, match="must be float32, float64, float16 or bfloat16"):
        ops.batch_renorm_eval(torch.ones(2, 3, dtype=torch.int32), w, b, rm, rs)
    with pytest.raises(RuntimeError, match="eps must be a finite number"):
        ops.batch_renorm_forward(torch.randn(2, 3), w, b, rm, rs, one, one, float("nan"))
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.clfast.batch_renorm_backward(torch.randn(2, 3), torch.randn(2, 3, 1), w, rm, rs, rs, rm, True)


def test_results_do_not_depend_on_the_thread_count():
    x = torch.randn(16, 8, 33, 17)
    xcl = x.contiguous(memory_format=torch.channels_last)
    w, b, rm, rs = torch.rand(8) + 0.5, torch.randn(8), torch.randn(8), torch.rand(8) + 0.5
    lim = torch.tensor(2.0)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append([ops.batch_renorm_forward(t, w, b, rm, rs, lim, lim, 1e-5) for t in (x, xcl)])
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(out[0], out[1], strict=True):
        for u, v in zip(a, b_, strict=True):
            assert torch.equal(u, v)


def test_module_under_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(4)
    eager = nn.Sequential(nn.Conv2d(3, 4, 3), BatchRenorm2d(4, r_d_max_inc_step=0.01))
    compiled_model = copy.deepcopy(eager)
    step = torch.compile(lambda m, x: m(x).square().mean(), fullgraph=True)
    for _ in range(2):
        x = torch.randn(4, 3, 6, 6)
        le = eager(x).square().mean()
        le.backward()
        lc = step(compiled_model, x)
        lc.backward()
        torch.testing.assert_close(lc, le)
    for (n, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=n)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(16, 5, 20, 20), (16, 3, 64, 64)])  # the second: several CUDA slices
def test_statistics_survive_a_large_mean(shape, layout, device):
    # mean 1e4, std 1e-2: raw float32 moments (E[x²] − E[x]²) would lose every digit of the variance.
    g = torch.Generator().manual_seed(9)
    x64 = 1e4 + 1e-2 * torch.randn(*shape, generator=g, dtype=torch.float64)
    x = _layout(x64.float(), layout).to(device)
    one = torch.ones(shape[1], device=device)
    lim = torch.tensor(3.0, device=device)
    _, mean, std, _, _ = ops.batch_renorm_forward(x, one, one * 0, one * 0, one, lim, lim, 1e-12)
    xf = x.double().cpu()  # the float32 values the kernel saw, in float64
    ref_std = (xf.var((0, 2, 3), unbiased=False) + 1e-12).sqrt()
    torch.testing.assert_close(std.double().cpu(), ref_std, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double().cpu(), xf.mean((0, 2, 3)), rtol=1e-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_nan_channel_has_nan_statistics_and_poisons_only_its_running_statistics(layout, device):
    # Avalanche's eager formula gives a NaN std for a channel holding a NaN; so must every kernel, and the update
    # must carry the NaN into that channel's running statistics instead of finite values.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 5, 3, generator=g)
    x[2, 1, 3, 0] = float("nan")
    x = _layout(x, layout).to(device)
    w, b = torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g)
    rm, rs = torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5
    w, b, rm, rs = (t.to(device) for t in (w, b, rm, rs))
    lim = torch.tensor(2.0, device=device)
    _, mean, std, r, d = ops.batch_renorm_forward(x, w, b, rm, rs, lim, lim, 1e-5)
    want = ref.batch_renorm_forward(x.cpu().double(), w.cpu().double(), b.cpu().double(), rm.cpu().double(),
                                    rs.cpu().double(), 2.0, 2.0, 1e-5)
    for got, exp in zip((mean, std, r, d), want[1:], strict=True):
        assert torch.isnan(got[1]).item() and torch.isfinite(got[[0, 2, 3]]).all().item()
        torch.testing.assert_close(got.cpu().double(), exp, rtol=1e-5, atol=1e-6, equal_nan=True)
    exp_rm, exp_rs, _, _ = ref.batch_renorm_update(rm.cpu().double(), rs.cpu().double(), 2.0, 2.0, mean.cpu().double(),
                                                   std.cpu().double(), 0.1, 0.01, 0.01, 3.0, 5.0)
    ops.batch_renorm_update_(rm, rs, lim.clone(), lim.clone(), mean, std, 0.1, 0.01, 0.01, 3.0, 5.0)
    for got, exp in ((rm, exp_rm), (rs, exp_rs)):
        assert torch.isnan(got[1]).item()
        torch.testing.assert_close(got.cpu().double(), exp, rtol=1e-6, atol=1e-7, equal_nan=True)
