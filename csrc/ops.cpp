// The operator schemas, declared once for every device, and the Python module that loads them.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(pylander, m) {
  m.def("discounted_returns(Tensor rewards, Tensor dones, float gamma, Tensor? bootstrap=None)"
        " -> Tensor");
  m.def("gae(Tensor rewards, Tensor values, Tensor dones, Tensor last_values, float gamma,"
        " float lam) -> Tensor");
  // clip_coef > 0 (with old_log_probs) makes the loss PPO's clipped surrogate; 0 is the plain
  // weighted log-prob loss, whose clip_fraction is 0.
  m.def("pg_loss(Tensor logits, Tensor actions, Tensor weights, str reduction=\"mean\","
        " Tensor? old_log_probs=None, float clip_coef=0.0)"
        " -> (Tensor loss, Tensor entropy, Tensor clip_fraction)");
  m.def("pg_loss_backward(Tensor grad_loss, Tensor grad_entropy, Tensor logits, Tensor actions,"
        " Tensor weights, str reduction, Tensor? old_log_probs=None, float clip_coef=0.0)"
        " -> Tensor");
  m.def("sample_categorical(Tensor logits, Generator? generator=None)"
        " -> (Tensor actions, Tensor log_probs)");
  // Functional (new tensors out) rather than in-place: opcheck and torch.compile handle it
  // without aliasing annotations, and a rejected input leaves the caller's state untouched.
  m.def("adam_scan(Tensor param, Tensor grads, Tensor exp_avg, Tensor exp_avg_sq, int step,"
        " float lr, float beta1, float beta2, float eps)"
        " -> (Tensor param, Tensor exp_avg, Tensor exp_avg_sq)");
  // The tanh MLP actor and critic of --algo reinforce (csrc/composite/actor_critic.cpp).
  m.def("policy_sample(Tensor obs, Tensor[] actor, Tensor? obs_mean, Tensor? obs_var,"
        " float obs_clip, Generator? generator=None) -> (Tensor actions, Tensor log_probs)");
  // Greedy actions (argmax of the logits) of the same policy, the logits bit for bit those of
  // ActorCritic.logits on every device: evaluation's per-step call.
  m.def("policy_greedy(Tensor obs, Tensor[] actor, Tensor? obs_mean, Tensor? obs_var,"
        " float obs_clip) -> Tensor");
  // The whole batch's log-softmax of the actor and values of the critic (empty without one):
  // the update's forward passes before and after its minibatches.
  m.def("actor_critic_forward(Tensor obs, Tensor[] actor, Tensor[] critic)"
        " -> (Tensor log_probs, Tensor values)");
  m.def("actor_critic_grads(Tensor obs, Tensor[] actor, Tensor[] critic, Tensor actions,"
        " Tensor advantages, Tensor old_log_probs, Tensor returns, float clip_coef,"
        " float ent_coef, float vf_coef, float scale)"
        " -> (Tensor[] actor_grads, Tensor[] critic_grads, Tensor stats)");
  // Gradient-norm clipping per group of parameters, in place (csrc/composite/clip_grad_norms.cpp).
  m.def("clip_grad_norms_(Tensor(a!)[] grads, int[] group_sizes, float max_norm) -> Tensor");
  // The notebook's PolicyNetwork.act on one observation, drawing from torch's global generator
  // (csrc/composite/notebook_act.cpp).
  m.def("notebook_act(Tensor observation, Tensor weight, Tensor bias) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pylander native operators; call them through torch.ops.pylander or pylander.ops.";
#ifdef PYLANDER_WITH_CUDA
  m.attr("cuda_kernels") = true;
#else
  m.attr("cuda_kernels") = false;
#endif
}
