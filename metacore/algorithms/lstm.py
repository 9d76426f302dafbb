"""The LSTM meta-learner (Ravi & Larochelle 2017): MAML's start, plus a learned rule for each step.

The network's parameters θ are the cell state of an LSTM shared by every coordinate:

    θ_t = f_t ⊙ θ_{t-1} − i_t ⊙ ∇_t        (an LSTM cell update with candidate −∇_t)

The input gate i_t is a learned learning rate for each weight at each step, the forget gate f_t a learned shrinkage
(1: keep the weight). Both read [h_t, θ_{t-1}, their own previous value], where h_t is a small coordinate-wise LSTM's
state over the step's preprocessed gradient and loss (Andrychowicz et al. 2016: log-magnitude and sign). The initial
cell state, the body, is meta-learned as MAML's initialisation is; the head starts at zero in every task, so one model
serves any number of classes. Gates start near plain gradient descent: forget bias 5 (f = 0.993), input bias
logit(inner_lr) (i = the inner lr).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metacore.algorithms.maml import MAML
from metacore.inner import UpdateRule
from metacore.models import Backbone, Params

HIDDEN = 20  # the coordinate-wise LSTM's state size (the paper's)
PREPROCESS_P = 10.0  # Andrychowicz et al.'s p: magnitudes below e^-p are kept linear
FORGET_BIAS = 5.0  # sigmoid(5) = 0.993; the paper draws it from U(4, 6)
PREFIX = "lstm."


def preprocess(x: Tensor, p: float = PREPROCESS_P) -> Tensor:
    """(N,) -> (N, 2): (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x): scale-free inputs for the LSTM."""
    big = x.abs() >= math.exp(-p)
    log = torch.log(x.abs().clamp(min=math.exp(-p))) / p  # clamped: log(0)'s infinite gradient must not leak
    return torch.stack([torch.where(big, log, -torch.ones_like(x)), torch.where(big, x.sign(), math.exp(p) * x)], -1)


def initial_weights(inner_lr: float, like: Tensor) -> Params:
    """The update rule's meta-parameters: the coordinate-wise LSTM (input 4: gradient and loss, preprocessed) and the
    two gates over [h, θ, previous gate]."""
    k = 1 / math.sqrt(HIDDEN)

    def uniform(*shape: int, bound: float) -> Tensor:
        return torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(-bound, bound)

    def full(value: float) -> Tensor:
        return torch.full((1,), value, dtype=like.dtype, device=like.device)

    return {
        f"{PREFIX}w_ih": uniform(4 * HIDDEN, 4, bound=k),
        f"{PREFIX}w_hh": uniform(4 * HIDDEN, HIDDEN, bound=k),
        f"{PREFIX}b": uniform(4 * HIDDEN, bound=k),
        f"{PREFIX}w_input": uniform(HIDDEN + 2, bound=0.01),
        f"{PREFIX}b_input": full(math.log(inner_lr / (1 - inner_lr))),  # sigmoid(b) = inner_lr
        f"{PREFIX}w_forget": uniform(HIDDEN + 2, bound=0.01),
        f"{PREFIX}b_forget": full(FORGET_BIAS),
    }


class LearnedUpdate:
    """One adaptation's run of the rule: the LSTM's state and the previous gates, one value per coordinate."""

    def __init__(self, weights: Params, fixed_gates: tuple[float, float] | None = None) -> None:
        self.w = {k.removeprefix(PREFIX): v for k, v in weights.items()}
        self.fixed_gates = fixed_gates  # (forget, input): the rule with constant gates, e.g. (1, lr) is SGD
        self.state: tuple[Tensor, Tensor] | None = None
        self.previous: tuple[Tensor, Tensor] | None = None

    def gates(self, theta: Tensor, grad: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """(forget, input) for every coordinate, from one coordinate-wise LSTM step."""
        if self.fixed_gates is not None:
            return tuple(torch.full_like(theta, g) for g in self.fixed_gates)
        n = theta.shape[0]
        if self.state is None:
            self.state = (theta.new_zeros(n, HIDDEN), theta.new_zeros(n, HIDDEN))
            self.previous = (theta.new_zeros(n), theta.new_zeros(n))
        x = torch.cat([preprocess(grad), preprocess(loss.reshape(1)).expand(n, 2)], -1)
        h, c = self.state
        weights = torch.cat([self.w["w_ih"], self.w["w_hh"]], 1)  # one (N, 24) x (24, 80) product: 2x faster
        i1, f1, g1, o1 = torch.addmm(self.w["b"], torch.cat([x, h], 1), weights.T).chunk(4, -1)
        c = torch.sigmoid(f1) * c + torch.sigmoid(i1) * torch.tanh(g1)
        h = torch.sigmoid(o1) * torch.tanh(c)
        self.state = (h, c)
        forget_before, input_before = self.previous
        forget = torch.sigmoid(torch.cat([h, theta[:, None], forget_before[:, None]], -1) @ self.w["w_forget"]
                               + self.w["b_forget"])  # fmt: skip
        input_ = torch.sigmoid(torch.cat([h, theta[:, None], input_before[:, None]], -1) @ self.w["w_input"]
                               + self.w["b_input"])  # fmt: skip
        self.previous = (forget, input_)
        return forget, input_

    def __call__(self, params: Params, grads: Params, loss: Tensor) -> tuple[Params, dict[str, Params]]:
        keys = list(params)
        theta = torch.cat([params[k].reshape(-1) for k in keys])
        grad = torch.cat([grads[k].reshape(-1) for k in keys])
        forget, input_ = self.gates(theta, grad, loss)
        cell = forget * theta - input_ * grad

        def split(flat: Tensor) -> Params:
            parts = flat.split([params[k].numel() for k in keys])
            return {k: part.reshape(params[k].shape) for k, part in zip(keys, parts)}

        return split(cell), {"input": split(input_), "forget": split(forget)}


class LSTMMetaLearner(MAML):
    """Meta-learns the initialisation (the cell state) and the update rule (the LSTM's weights, `lstm.*`).

    `first_order`: the paper's simplification, the gradient and loss fed to the LSTM (and the step's −∇) taken as
    constants in the outer backward pass; without it the meta-gradient is exact through every unrolled step."""

    name = "lstm"

    def __init__(
        self,
        backbone: Backbone,
        inner_lr: float = 0.001,
        inner_steps: int = 5,
        head: str = "zero",
        *,
        first_order: bool = False,
    ) -> None:
        super().__init__(backbone, inner_lr, inner_steps, head)
        self.first_order = first_order
        self.params |= initial_weights(self.inner_lr, next(iter(backbone.params.values())))

    def update_rule(self, params: Params, lr: float | None) -> UpdateRule:
        """The learned rule; with `lr`, the same cell update with its gates fixed at (forget 1, input lr): SGD."""
        weights = {k: v for k, v in params.items() if k.startswith(PREFIX)}
        return LearnedUpdate(weights, None if lr is None else (1.0, lr))

    @property
    def learns_rates(self) -> bool:
        return True

    def lr_in_force(self, lr: float | None = None) -> float | str:
        return lr if lr is not None else "a learned update rule (LSTM meta-learner: per-weight, per-step rates)"

    def rates_in_words(self) -> str:
        return f"learned update rule (LSTM gates; they start at lr {self.inner_lr:g}, forget 0.993)"

    def config(self) -> dict:
        return super().config() | ({"first_order": True} if self.first_order else {})
