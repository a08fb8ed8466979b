"""`ops.adam_scan` and `apply_adam_scan` against torch.optim.Adam's own loop, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor
from torch.library import opcheck

import pylander  # noqa: F401  (loads the ops)
from pylander import ops
from pylander.algorithms.adam_scan import apply_adam_scan

OPS = torch.ops.pylander
HYPER = [  # (lr, beta1, beta2, eps); beta1 <= 0.5 takes torch's other lerp branch
    (1e-3, 0.9, 0.999, 1e-8),
    (0.05, 0.3, 0.9, 1e-6),
    (0.01, 0.0, 0.0, 0.0),
]


def random_grads(T: int, P: int, dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    # Columns spanning eight decades, so eps matters in some and not in others.
    scales = torch.logspace(-6, 2, P, dtype=dtype)
    return torch.randn(T, P, generator=g, dtype=dtype) * scales


def torch_loop(param: Tensor, grads: Tensor, hyper, warmup: Tensor | None = None, **adam_kwargs):
    """Run `warmup` then `grads` through torch.optim.Adam one step at a time.

    Returns (state before `grads`: param, exp_avg, exp_avg_sq, step) and the state after."""
    lr, beta1, beta2, eps = hyper
    p = torch.nn.Parameter(param.clone())
    opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, **adam_kwargs)
    for g in [] if warmup is None else warmup:
        p.grad = g.clone()
        opt.step()
    state = opt.state[p]
    zeros = torch.zeros_like(param)
    before = (
        p.detach().clone(),
        state.get("exp_avg", zeros).clone(),
        state.get("exp_avg_sq", zeros).clone(),
        int(state.get("step", 0)),
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    state = opt.state[p]
    return before, (p.detach(), state["exp_avg"], state["exp_avg_sq"])


def assert_bitwise(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        diff = (a != b).sum().item()
        assert diff == 0, f"{diff} entries differ, max {(a - b).abs().max().item():g}"


# --- the op ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 50, 1000])
@pytest.mark.parametrize("warmup_steps", [0, 7])
@pytest.mark.parametrize("hyper", HYPER)
def test_op_matches_torch_adam_bitwise(T, warmup_steps, hyper, dtype):
    P = 37  # not a multiple of any vector width: torch's vector and scalar tails both run
    grads = random_grads(T, P, dtype, seed=T)
    warmup = random_grads(warmup_steps, P, dtype, seed=T + 1)
    param = torch.randn(P, dtype=dtype, generator=torch.Generator().manual_seed(2))
    (p0, m0, v0, step), want = torch_loop(param, grads, hyper, warmup)
    assert step == warmup_steps
    got = ops.adam_scan(p0, grads, m0, v0, step, *hyper)
    assert_bitwise(got, want)
    assert not torch.equal(got[0], p0)  # the parameters moved


def test_op_leaves_its_inputs_alone_and_handles_empty_inputs():
    param, m, v = torch.randn(5), torch.randn(5), torch.rand(5)
    saved = [x.clone() for x in (param, m, v)]
    ops.adam_scan(param, torch.randn(3, 5), m, v, 2, 1e-3)
    assert_bitwise((param, m, v), saved)
    assert_bitwise(ops.adam_scan(param, torch.empty(0, 5), m, v, 2, 1e-3), saved)
    empty = torch.empty(0)
    assert_bitwise(ops.adam_scan(empty, torch.empty(4, 0), empty, empty, 0, 1e-3), [empty] * 3)


def test_op_large_parameter_runs_in_blocks_and_threads():
    # More than one 2048-entry block and enough work for several threads.
    P, T = 5000, 40
    grads = random_grads(T, P, torch.float32, seed=3)
    param = torch.randn(P)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (p0, m0, v0, step), want = torch_loop(param, grads, HYPER[0])
        got = ops.adam_scan(p0, grads, m0, v0, step, *HYPER[0])
    finally:
        torch.set_num_threads(threads)
    assert_bitwise(got, want)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and pylander.CUDA_KERNELS),
    reason="needs a GPU and the CUDA kernels",
)
@pytest.mark.parametrize("hyper", HYPER)
def test_op_matches_torch_adam_on_cuda(hyper, dtype):
    # torch's default on CUDA is the foreach path, whose roundings the CUDA kernel follows.
    grads = random_grads(300, 1000, dtype, seed=4).cuda()
    param = torch.randn(1000, dtype=dtype, device="cuda")
    (p0, m0, v0, step), want = torch_loop(param, grads, hyper, grads[:5])
    assert_bitwise(ops.adam_scan(p0, grads, m0, v0, step, *hyper), want)


def test_opcheck():
    grads = random_grads(6, 9, torch.float64, seed=0)
    args = (
        torch.randn(9, dtype=torch.float64),
        grads,
        torch.randn(9, dtype=torch.float64),
        torch.rand(9, dtype=torch.float64),
        3,
        1e-3,
        0.9,
        0.999,
        1e-8,
    )
    opcheck(OPS.adam_scan.default, args)


def test_op_compiles_fullgraph():
    grads = random_grads(4, 6, torch.float32, seed=1)
    param, m, v = torch.randn(6), torch.zeros(6), torch.zeros(6)
    compiled = torch.compile(lambda *a: ops.adam_scan(*a, 0, 1e-3), fullgraph=True)
    assert_bitwise(compiled(param, grads, m, v), ops.adam_scan(param, grads, m, v, 0, 1e-3))


def bad_op_cases():
    p, g, m, v = torch.zeros(4), torch.zeros(3, 4), torch.zeros(4), torch.zeros(4)
    inf_v = torch.full((4,), float("inf"))
    nan_g = g.clone()
    nan_g[1, 2] = float("nan")
    inf_g = g.clone()
    inf_g[2, 0] = float("inf")
    return [
        ((p, torch.zeros(3, 5), m, v, 0, 1e-3), RuntimeError, "`grads` must have P=4"),
        ((p, torch.zeros(4), m, v, 0, 1e-3), RuntimeError, "`grads` must have shape"),
        ((p.reshape(2, 2), g, m, v, 0, 1e-3), RuntimeError, "`param` must have shape"),
        ((p, g, torch.zeros(5), v, 0, 1e-3), RuntimeError, "`exp_avg` must have the shape"),
        ((p, g, m, v.double(), 0, 1e-3), RuntimeError, "`exp_avg_sq` must be Float"),
        ((p, g.double(), m, v, 0, 1e-3), RuntimeError, "`grads` must be Float"),
        ((p.long(), g.long(), m.long(), v.long(), 0, 1e-3), RuntimeError, "float32 or float64"),
        ((p, nan_g, m, v, 0, 1e-3), ValueError, "contains NaN or infinity"),
        ((p, inf_g, m, v, 0, 1e-3), ValueError, "contains NaN or infinity"),
        ((p, g, m, inf_v, 0, 1e-3), ValueError, "contains NaN or infinity"),
        ((p, g, m, v, -1, 1e-3), ValueError, "`step`"),
        ((p, g, m, v, 0, -1e-3), ValueError, "`lr`"),
        ((p, g, m, v, 0, float("nan")), ValueError, "`lr`"),
        ((p, g, m, v, 0, 1e-3, 1.0), ValueError, "`beta1`"),
        ((p, g, m, v, 0, 1e-3, 0.9, -0.1), ValueError, "`beta2`"),
        ((p, g, m, v, 0, 1e-3, 0.9, 0.999, -1e-8), ValueError, "`eps`"),
    ]


@pytest.mark.parametrize("case", range(len(bad_op_cases())))
def test_op_bad_input_raises_named_error(case):
    args, error, match = bad_op_cases()[case]
    with pytest.raises(error, match=match):
        ops.adam_scan(*args)


# --- apply_adam_scan on a live optimizer -----------------------------------------------------


def notebook_layer(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Adam]:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(8, 4)  # the notebook's network
    return layer, torch.optim.Adam(layer.parameters(), lr=1e-3)


def episode_grads(layer: torch.nn.Linear, T: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(p, torch.randn(T, *p.shape, generator=g) * 0.1) for p in layer.parameters()]


def loop(optimizer: torch.optim.Adam, params_and_grads) -> None:
    """The notebook's per-step update, which apply_adam_scan replaces."""
    for t in range(params_and_grads[0][1].shape[0]):
        for param, grads in params_and_grads:
            param.grad = grads[t]
        optimizer.step()


def assert_same_optimizer(a: torch.optim.Adam, b: torch.optim.Adam) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for key in sa["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            want = sa["state"][key][name]
            got = sb["state"][key][name]
            assert got.dtype == want.dtype and torch.equal(got, want), name
    for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"], strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_apply_matches_the_step_loop_over_episodes(foreach):
    layer, opt = notebook_layer()
    opt.param_groups[0]["foreach"] = foreach
    twin = copy.deepcopy(layer)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3, foreach=foreach)
    for episode, T in enumerate([1, 2, 50, 200]):  # the first one starts from an empty state
        loop(opt, episode_grads(layer, T, seed=episode))
        apply_adam_scan(twin_opt, episode_grads(twin, T, seed=episode))
        assert_same_optimizer(opt, twin_opt)
    assert int(twin_opt.state[twin.weight]["step"]) == 253


def test_apply_state_checkpoints_and_resumes_exactly(tmp_path):
    layer, opt = notebook_layer()
    apply_adam_scan(opt, episode_grads(layer, 30, seed=0))
    torch.save({"layer": layer.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    loop(opt, episode_grads(layer, 20, seed=1))  # the original goes on with torch's own steps

    resumed, resumed_opt = notebook_layer(seed=5)  # other weights, overwritten by the load
    saved = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(saved["layer"])
    resumed_opt.load_state_dict(saved["opt"])
    apply_adam_scan(resumed_opt, episode_grads(resumed, 20, seed=1))
    assert_same_optimizer(opt, resumed_opt)


def test_apply_leaves_other_parameters_and_grads_alone():
    layer, opt = notebook_layer()
    bias = layer.bias.detach().clone()
    layer.weight.grad = None
    apply_adam_scan(opt, [(layer.weight, torch.randn(5, 4, 8))])
    assert torch.equal(layer.bias, bias) and layer.bias not in opt.state
    assert layer.weight.grad is None
    assert int(opt.state[layer.weight]["step"]) == 5


def test_apply_rejects_what_it_does_not_implement():
    layer, opt = notebook_layer()
    grads = episode_grads(layer, 3, seed=0)
    with pytest.raises(TypeError, match="torch.optim.Adam"):
        apply_adam_scan(torch.optim.SGD(layer.parameters(), lr=0.1), grads)
    for option, value in [("weight_decay", 0.01), ("amsgrad", True), ("maximize", True)]:
        bad = torch.optim.Adam(layer.parameters(), lr=1e-3, **{option: value})
        with pytest.raises(ValueError, match=option):
            apply_adam_scan(bad, grads)
    with pytest.raises(ValueError, match="not in `optimizer`"):
        apply_adam_scan(opt, [(torch.nn.Parameter(torch.zeros(3)), torch.zeros(2, 3))])
    with pytest.raises(ValueError, match="shape"):
        apply_adam_scan(opt, [(layer.weight, torch.zeros(3, 8, 4))])
    with pytest.raises(ValueError, match="same number of steps"):
        apply_adam_scan(
            opt, [(layer.weight, torch.zeros(3, 4, 8)), (layer.bias, torch.zeros(2, 4))]
        )


def test_apply_non_finite_gradient_changes_nothing():
    layer, opt = notebook_layer()
    apply_adam_scan(opt, episode_grads(layer, 4, seed=0))
    before = copy.deepcopy((layer.state_dict(), opt.state_dict()))
    grads = episode_grads(layer, 4, seed=1)
    grads[1][1][2, 0] = float("nan")  # in the bias, after the weight's update was computed
    with pytest.raises(ValueError, match="NaN or infinity"):
        apply_adam_scan(opt, grads)
    for name, value in layer.state_dict().items():
        assert torch.equal(value, before[0][name])
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, before[1]["state"][key][name])
