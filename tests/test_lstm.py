"""The LSTM meta-learner: its meta-gradient against an independent unrolled implementation, its reduction to SGD,
and its batching modes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import random_task, tiny_backbone
from metacore.algorithms import ALGORITHMS, MAML, LSTMMetaLearner
from metacore.algorithms.lstm import HIDDEN, PREFIX
from metacore.checkpoint import adapted_checkpoint, load_checkpoint, save_checkpoint
from metacore.data import Task
from metacore.inner import run_to_end
from metacore.models import Params


def learner_with_lively_gates(steps: int = 3, first_order: bool = False) -> LSTMMetaLearner:
    """Gate weights large enough that the gates differ from coordinate to coordinate and step to step."""
    learner = LSTMMetaLearner(tiny_backbone(), inner_lr=0.3, inner_steps=steps, first_order=first_order)
    g = torch.Generator().manual_seed(3)
    for name in ("w_input", "w_forget"):
        learner.params[PREFIX + name] = torch.randn(HIDDEN + 2, generator=g, dtype=torch.float64)
    learner.params[PREFIX + "b_forget"] = torch.tensor([2.0], dtype=torch.float64)
    return learner


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def preprocessed(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s preprocessing, written with masks instead of `where`."""
    big = (x.abs() >= math.exp(-p)).to(x.dtype)
    magnitude = big * torch.log(x.abs() + (1 - big)) / p - (1 - big)
    direction = big * torch.sign(x) + (1 - big) * math.exp(p) * x
    return torch.stack([magnitude, direction], 1)


def unrolled_query_loss(learner: LSTMMetaLearner, params: Params, task: Task, first_order: bool) -> torch.Tensor:
    """The query loss after the learner's steps, by plain autograd (`create_graph`) and the paper's equations."""
    w = {k[len(PREFIX) :]: v for k, v in params.items() if k.startswith(PREFIX)}
    way, dim = len(task.classes), learner.backbone.feature_dim
    theta = {k: v for k, v in params.items() if not k.startswith(PREFIX)}
    theta["head.weight"] = torch.zeros(way, dim, dtype=torch.float64, requires_grad=True)
    theta["head.bias"] = torch.zeros(way, dtype=torch.float64, requires_grad=True)
    keys = list(theta)

    def loss_of(theta: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = learner.backbone.features({k: theta[k] for k in keys if not k.startswith("head.")}, x)
        return F.cross_entropy(features @ theta["head.weight"].T + theta["head.bias"], y)

    n = sum(v.numel() for v in theta.values())
    h, c = torch.zeros(n, HIDDEN, dtype=torch.float64), torch.zeros(n, HIDDEN, dtype=torch.float64)
    f_prev, i_prev = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for _ in range(learner.inner_steps):
        loss = loss_of(theta, task.support_x, task.support_y)
        grads = torch.autograd.grad(loss, [theta[k] for k in keys], create_graph=not first_order)
        if first_order:
            loss = loss.detach()
        flat_theta = torch.cat([theta[k].flatten() for k in keys])
        flat_grad = torch.cat([g.flatten() for g in grads])
        x = torch.cat([preprocessed(flat_grad), preprocessed(loss.reshape(1)).repeat(n, 1)], 1)
        z = x @ w["w_ih"].T + h @ w["w_hh"].T + w["b"]
        i1, f1, g1, o1 = z[:, :HIDDEN], z[:, HIDDEN : 2 * HIDDEN], z[:, 2 * HIDDEN : 3 * HIDDEN], z[:, 3 * HIDDEN :]
        c = sigmoid(f1) * c + sigmoid(i1) * torch.tanh(g1)
        h = sigmoid(o1) * torch.tanh(c)
        f = sigmoid(h @ w["w_forget"][:HIDDEN] + flat_theta * w["w_forget"][HIDDEN] + f_prev * w["w_forget"][-1]
                    + w["b_forget"])  # fmt: skip
        i = sigmoid(h @ w["w_input"][:HIDDEN] + flat_theta * w["w_input"][HIDDEN] + i_prev * w["w_input"][-1]
                    + w["b_input"])  # fmt: skip
        f_prev, i_prev = f, i
        new = f * flat_theta - i * flat_grad
        offsets = [0]
        for k in keys:
            offsets.append(offsets[-1] + theta[k].numel())
        theta = {k: new[a:b].reshape(theta[k].shape) for k, a, b in zip(keys, offsets, offsets[1:])}
    return loss_of(theta, task.query_x, task.query_y)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_an_independent_unrolled_implementation(first_order: bool) -> None:
    learner = learner_with_lively_gates(first_order=first_order)
    tasks = [random_task(seed=s) for s in range(2)]
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    learner.params = params
    ours = torch.autograd.grad(learner.meta_loss(tasks)[0], list(params.values()))
    reference_loss = torch.stack([unrolled_query_loss(learner, params, t, first_order) for t in tasks]).mean()
    reference = torch.autograd.grad(reference_loss, list(params.values()))
    assert float(reference_loss.detach()) == pytest.approx(float(learner.meta_loss(tasks)[0].detach()), abs=1e-12)
    for name, a, b in zip(params, ours, reference):
        assert (a - b).abs().max() <= 1e-8, name
        assert b.abs().max() > 0, name  # every weight of the rule and the network gets a gradient
    if first_order:  # the simplification changes the gradient: the flag is not a no-op
        exact = LSTMMetaLearner(learner.backbone, 0.3, 3)
        exact.params = params
        full = torch.autograd.grad(exact.meta_loss(tasks)[0], list(params.values()))
        assert any((a - b).abs().max() > 1e-6 for a, b in zip(ours, full))


def test_gates_fixed_at_forget_1_and_input_lr_are_exactly_sgd() -> None:
    learner = learner_with_lively_gates(steps=4)
    task = random_task(seed=4)
    sgd = MAML(learner.backbone, inner_lr=0.3, inner_steps=4)
    sgd.params = {k: v for k, v in learner.params.items() if not k.startswith(PREFIX)}
    fixed = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y, lr=0.3))
    plain = list(sgd.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    assert len(fixed) == len(plain) == 5
    for a, b in zip(fixed, plain):
        assert set(a.params) == set(b.params)
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params), a.step
        assert torch.equal(a.query_logits, b.query_logits)
    assert all(bool((s.gates["forget"]["head.weight"] == 1).all()) for s in fixed[1:])
    learned = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    assert not torch.equal(learned[-1].params["head.weight"], plain[-1].params["head.weight"])


def test_gates_start_near_plain_gradient_descent_and_adapting_leaves_the_model_as_it_was() -> None:
    learner = LSTMMetaLearner(tiny_backbone(), inner_lr=0.1, inner_steps=3)
    before = {k: v.clone() for k, v in learner.params.items()}
    task = random_task(seed=2)
    snapshots = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    assert snapshots[0].gates is None
    for snapshot in snapshots[1:]:
        for values in snapshot.gates["input"].values():
            assert ((values - 0.1).abs() < 0.01).all()
        for values in snapshot.gates["forget"].values():
            assert ((values - 1 / (1 + math.exp(-5))).abs() < 0.01).all()
    assert snapshots[-1].support_loss < snapshots[0].support_loss
    assert all(torch.equal(learner.params[k], v) for k, v in before.items())


@pytest.mark.parametrize("mode", ["vmap", "threads"])
def test_vmap_and_threads_give_the_loops_meta_gradient(mode: str) -> None:
    tasks = [random_task(seed=s) for s in range(3)]

    def gradient(mode: str) -> dict[str, torch.Tensor]:
        learner = learner_with_lively_gates(steps=2)
        learner.params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
        if mode == "threads":
            return learner.threaded_meta_gradient(tasks, workers=2)[2]
        loss = learner.meta_loss(tasks, vectorize=mode == "vmap")[0]
        return dict(zip(learner.params, torch.autograd.grad(loss, list(learner.params.values()))))

    looped, other = gradient("loop"), gradient(mode)
    for k in looped:
        assert torch.allclose(looped[k], other[k], rtol=0, atol=1e-10), k


def test_a_saved_lstm_learner_adapts_the_same_after_loading(tmp_path) -> None:
    learner = learner_with_lively_gates(steps=2, first_order=True)
    save_checkpoint(tmp_path / "lstm.pt", learner)
    loaded, _ = load_checkpoint(tmp_path / "lstm.pt")
    assert isinstance(loaded, LSTMMetaLearner) and loaded.first_order
    task = random_task(seed=8)
    a = list(learner.adapt(task.support_x, task.support_y, task.query_x))[-1]
    b = list(loaded.adapt(task.support_x, task.support_y, task.query_x))[-1]
    assert torch.equal(a.query_logits, b.query_logits)


@pytest.mark.parametrize("algorithm", ["metasgd", "lstm"])
def test_an_adapted_model_of_a_learned_update_rule_loads_and_keeps_its_rule(algorithm: str, tmp_path) -> None:
    """The Features page's download: the adapted body and head, plus the rule's weights (Meta-SGD's rates, the
    LSTM's), without which the file did not load."""
    learner = ALGORITHMS[algorithm](tiny_backbone(), 0.3, 2)
    task = random_task(seed=9)
    adapted = {k: v.detach() for k, v in run_to_end(learner.adapt(task.support_x, task.support_y)).params.items()}
    (tmp_path / "adapted.pt").write_bytes(adapted_checkpoint(learner, adapted, task.classes))
    loaded, meta = load_checkpoint(tmp_path / "adapted.pt")
    assert torch.equal(meta["adapted_head"]["head.weight"], adapted["head.weight"])
    rule = [k for k in learner.params if k.startswith(("lr.", PREFIX))]
    assert rule and all(torch.equal(loaded.params[k], learner.params[k]) for k in rule)


def test_train_evaluate_and_classify_an_lstm_model_from_the_command_line(tmp_path, capsys) -> None:
    from metacore.__main__ import main
    from test_data import make_class_folders

    make_class_folders(tmp_path / "toy", {f"class{i:02d}": 4 for i in range(6)})
    data = ["--data-root", str(tmp_path), "--dataset", "toy", "--way", "3", "--shot", "1", "--query", "2"]
    out = tmp_path / "lstm.pt"
    code = main(["train", *data, "--algo", "lstm", "--first-order", "--inner-lr", "0.1", "--steps", "2",
                 "--iterations", "2", "--meta-batch", "2", "--rule-meta-lr", "0.01", "--val-every", "2",
                 "--val-episodes", "2", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    learner, meta = load_checkpoint(out)
    assert isinstance(learner, LSTMMetaLearner) and learner.first_order
    assert meta["config"]["rule_meta_lr"] == 0.01
    start = initial_weights_of(meta)
    assert not torch.equal(learner.params[PREFIX + "b_input"], start)  # the rule itself was meta-trained
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), *data, "--episodes", "2", "--json"]) == 0
    assert "learned update rule" in json.loads(capsys.readouterr().out)["inner_lr"]
    query = next((tmp_path / "toy" / "class01").iterdir())
    assert main(["classify", "--checkpoint", str(out), "--support", str(tmp_path / "toy"), str(query)]) == 0


def initial_weights_of(meta: dict) -> torch.Tensor:
    """The input-gate bias a model with this config started from: logit(inner lr)."""
    lr = meta["config"]["inner_lr"]
    return torch.tensor([math.log(lr / (1 - lr))])
