"""One-core trainer iterations, alternating the update's kernels: composite (ATen calls, the
fourth session's CPU path) and the CPU kernels, interleaved in one process."""
import time, torch
torch.set_num_threads(1)
from pylander.algorithms import reinforce as R
from pylander.algorithms import get_algorithm
from pylander.config import TrainConfig
from pylander.distributed import Collective
dev = torch.device("cpu")
alg = get_algorithm("reinforce").build(TrainConfig(quiet=True, rollout_workers=0), dev, Collective(dev))
alg.reset_envs(1)
ks = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
acg, cgn = torch.ops.pylander.actor_critic_grads.default, torch.ops.pylander.clip_grad_norms_.default
variants = {
    "composite": (lambda *a: acg.redispatch(ks, *a), lambda g, s, m: cgn.redispatch(ks, g, list(s), float(m))),
    "cpu": (lambda *a: acg(*a), lambda g, s, m: cgn(g, list(s), float(m))),
}
real_update = R.Reinforce.update
upd = {k: [] for k in variants}
def timed_update(self, *a):
    t = time.perf_counter(); out = real_update(self, *a); upd[current].append(time.perf_counter() - t); return out
R.Reinforce.update = timed_update
tot = {k: [] for k in variants}
for _ in range(3): current = "cpu"; alg.iterate(0.0)
for k in upd: upd[k].clear()
for rep in range(40):
    for current, (f, c) in variants.items():
        R.ops.actor_critic_grads, R.ops.clip_grad_norms_ = f, c
        t = time.perf_counter(); alg.iterate(0.0); tot[current].append(time.perf_counter() - t)
med = lambda v: sorted(v)[len(v) // 2] * 1e3
for k in variants:
    print(f"{k}: iterate median {med(tot[k]):.1f} ms, update median {med(upd[k]):.1f} ms")
print("iterate ratio composite/cpu %.3f, update ratio %.3f" % (med(tot["composite"]) / med(tot["cpu"]), med(upd["composite"]) / med(upd["cpu"])))
