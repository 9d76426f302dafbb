"""Each method does what its paper says, and adaptation never touches the shared parameters."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import random_task, tiny_backbone
from metacore.algorithms import ALGORITHMS, ANIL, MAML, MetaSGD, ProtoNet, Reptile
from metacore.errors import MetacoreError
from metacore.features import predict_proba
from metacore.inner import run_to_end
from metacore.models import Conv4, class_means, fits_few_channel_conv


def test_reptile_moves_initialisation_toward_adapted_weights() -> None:
    learner = Reptile(tiny_backbone(), inner_lr=0.1, inner_steps=3, head="proto")
    task = random_task(seed=3)
    start = {k: v.clone() for k, v in learner.params.items()}
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    adapted = run_to_end(learner.adapt(x, y, way=task.way)).params
    learner.params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    epsilon = 0.5
    learner.outer_step(torch.optim.SGD(learner.params.values(), lr=epsilon), [task])
    for k in start:
        expected = start[k] + epsilon * (adapted[k] - start[k])  # the paper's interpolation step
        assert torch.allclose(learner.params[k].detach(), expected, atol=1e-12), k
    distance_before = sum((start[k] - adapted[k]).norm() for k in start)
    distance_after = sum((learner.params[k].detach() - adapted[k]).norm() for k in start)
    assert distance_after < distance_before


def test_protonet_logits_are_negative_squared_distances_to_class_means() -> None:
    learner = ProtoNet(tiny_backbone())
    task = random_task(way=4, shot=3, seed=2)
    snapshot = run_to_end(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    support_features = learner.backbone.features(learner.params, task.support_x)
    query_features = learner.backbone.features(learner.params, task.query_x)
    means = torch.stack([support_features[task.support_y == k].mean(0) for k in range(4)])
    expected = -(torch.cdist(query_features, means) ** 2)
    assert torch.allclose(snapshot.query_logits, expected, atol=1e-9)
    # The equivalent linear head gives the same probabilities.
    assert torch.allclose(predict_proba(learner, snapshot.params, task.query_x), expected.softmax(-1), atol=1e-9)
    assert torch.allclose(class_means(support_features, task.support_y, 4), means, atol=1e-12)


def test_metasgd_learns_its_inner_learning_rates() -> None:
    learner = MetaSGD(tiny_backbone(), inner_lr=0.1, inner_steps=1, head="proto")
    learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
    rates_before = {k: v.detach().clone() for k, v in learner.params.items() if k.startswith("lr.")}
    optimizer = torch.optim.Adam(learner.params.values(), lr=1e-2)
    tasks = [random_task(seed=s) for s in range(4)]
    first = learner.meta_loss(tasks)[0].item()
    for _ in range(15):
        learner.outer_step(optimizer, tasks)
    changed = [k for k, v in rates_before.items() if not torch.equal(v, learner.params[k].detach())]
    assert len(changed) == len(rates_before)
    assert learner.meta_loss(tasks)[0].item() < first


def test_metasgd_with_body_rates_only_learns_the_bodys_rates_and_steps_the_head_at_the_inner_lr() -> None:
    """`body_rates_only`: no rates for the head (it steps at inner_lr, way-scaled if asked); every body rate is
    learned. Its head's step is then exactly plain MAML's at that lr."""
    learner = MetaSGD(tiny_backbone(), inner_lr=0.1, inner_steps=2, head="zero", body_rates_only=True)
    assert not any(k.startswith("lr.head.") for k in learner.params)
    assert {k[3:] for k in learner.params if k.startswith("lr.")} == set(learner.backbone.params)
    assert learner.config()["body_rates_only"] is True and "; the head's lr 0.1)" in learner.lr_in_force()
    task = random_task(way=4, shot=2, seed=6)
    plain = MAML(tiny_backbone(), 0.1, 2, "zero")
    first_step = [list(m.adapt(task.support_x, task.support_y))[1].params["head.weight"] for m in (learner, plain)]
    assert torch.allclose(first_step[0], first_step[1], atol=1e-12)
    learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
    rates_before = {k: v.detach().clone() for k, v in learner.params.items() if k.startswith("lr.")}
    optimizer = torch.optim.Adam(learner.params.values(), lr=1e-2)
    for _ in range(3):
        learner.outer_step(optimizer, [random_task(seed=s) for s in range(2)])
    assert all(not torch.equal(v, learner.params[k].detach()) for k, v in rates_before.items())


@pytest.mark.parametrize("algorithm", [MAML, MetaSGD])
def test_a_way_scaled_head_steps_each_class_row_as_far_at_20_way_as_at_5_way(algorithm: type[MAML]) -> None:
    """The inner loss is a mean over classes, so a zero head's first step gives each class row 1/way of the class's
    (centred) mean feature times the rate. Scaled by way/5, that row step is the same at 5 and 20 ways; a 5-way
    task is not changed at all, and the body's steps are never scaled."""
    plain = algorithm(tiny_backbone(), 0.3, 2, "zero")
    scaled = algorithm(tiny_backbone(), 0.3, 2, "zero", way_scaled_head=True)
    for way, factor in ((5, 1.0), (20, 4.0)):
        task = random_task(way=way, shot=2, seed=way)
        first, second = (list(m.adapt(task.support_x, task.support_y)) for m in (plain, scaled))
        assert torch.allclose(second[1].params["head.weight"], factor * first[1].params["head.weight"], atol=1e-12)
        assert torch.allclose(second[1].params["head.bias"], factor * first[1].params["head.bias"], atol=1e-12)
        body = [k for k in first[1].params if not k.startswith("head.")]
        assert all(torch.equal(second[1].params[k], first[1].params[k]) for k in body)  # step 1: no body gradient
        if factor == 1.0:
            assert all(torch.equal(a.params[k], b.params[k]) for a, b in zip(first, second) for k in a.params)
        else:
            assert not torch.equal(second[2].params[body[0]], first[2].params[body[0]])  # another head, other grads


def test_anil_adapts_only_the_head() -> None:
    learner = ANIL(tiny_backbone(), inner_lr=0.5, inner_steps=3, head="zero")
    task = random_task(seed=4)
    snapshots = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    for k, v in learner.params.items():
        assert snapshots[-1].params[k] is v
    assert not torch.equal(snapshots[-1].params["head.weight"], snapshots[0].params["head.weight"])


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_inner_loop_leaves_its_input_parameters_bit_identical(name: str) -> None:
    learner = ALGORITHMS[name](tiny_backbone(), 0.5, 3, "proto")
    before = {k: v.clone() for k, v in learner.params.items()}
    task = random_task(seed=5)
    snapshots = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
    assert len(snapshots) == (1 if name == "protonet" else 4)
    assert [s.step for s in snapshots] == list(range(len(snapshots)))
    for k, v in before.items():
        assert torch.equal(learner.params[k], v), k
    if name != "protonet":
        first, last = snapshots[0].params, snapshots[-1].params
        assert any(not torch.equal(first[k], last[k]) for k in first)


@pytest.mark.parametrize("head", ["zero", "proto"])
def test_support_loss_falls_step_by_step(head: str) -> None:
    learner = MAML(tiny_backbone(), inner_lr=0.1 if head == "zero" else 0.01, inner_steps=5, head=head)
    task = random_task(seed=6)
    losses = [s.support_loss.item() for s in learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert all(
        s.query_acc is not None for s in learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y)
    )


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_one_image_alone_gets_the_same_probabilities_as_inside_a_batch(name: str) -> None:
    learner = ALGORITHMS[name](tiny_backbone(torch.float32), 0.4, 2, "proto")
    task = random_task(dtype=torch.float32, seed=7)
    params = run_to_end(learner.adapt(task.support_x, task.support_y)).params
    batch = predict_proba(learner, params, task.query_x)
    for i in range(len(task.query_x)):
        alone = predict_proba(learner, params, task.query_x[i : i + 1])
        assert torch.allclose(alone[0], batch[i], atol=1e-6), i


def test_threads_adapting_one_shared_model_get_the_same_results_as_alone() -> None:
    learner = MAML(tiny_backbone(), inner_lr=0.3, inner_steps=4, head="zero")
    tasks = [random_task(seed=s) for s in range(6)]

    def adapt(task):
        return [s.query_logits for s in learner.adapt(task.support_x, task.support_y, task.query_x)]

    alone = [adapt(t) for t in tasks]
    together: list = [None] * len(tasks)

    def worker(i: int) -> None:
        for _ in range(3):
            together[i] = adapt(tasks[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_any_way_heads_serve_any_number_of_classes() -> None:
    learner = MAML(tiny_backbone(), 0.3, 1, "zero")
    for way in (2, 7, 20):
        task = random_task(way=way, shot=1, query=1, seed=way)
        last = run_to_end(learner.adapt(task.support_x, task.support_y, task.query_x))
        assert last.query_logits.shape == (way, way)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_fast_conv4_forward_is_the_plain_layer_stack(in_channels: int) -> None:
    torch.manual_seed(0)
    model = Conv4(in_channels).double()
    x = torch.rand(6, in_channels, 28, 28, dtype=torch.float64)
    assert torch.allclose(model(x), model.blocks(x).flatten(1), atol=1e-12)
    model.blocks[0][0] = torch.nn.Conv2d(in_channels, 64, 5, padding=2).double()  # not 3x3: the plain conv runs
    assert not fits_few_channel_conv(model.blocks[0][0])
    assert torch.allclose(model(x), model.blocks(x).flatten(1), atol=1e-12)


@pytest.mark.parametrize("algorithm", ["maml", "anil", "metasgd"])
def test_a_support_set_adapted_in_chunks_takes_the_same_steps(algorithm: str) -> None:
    """Large support sets adapt `chunk` images at a time (bounded memory): the same steps, to float64 rounding."""
    from metacore.algorithms import ALGORITHMS

    learner = ALGORITHMS[algorithm](tiny_backbone(), 0.3, 3, "proto")
    task = random_task(way=3, shot=7, query=2)
    with torch.no_grad():
        whole = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y))
        parts = list(learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y, chunk=4))
    for a, b in zip(whole, parts):
        assert torch.allclose(a.support_loss, b.support_loss, rtol=1e-12, atol=0)
        assert torch.allclose(a.query_logits, b.query_logits, rtol=1e-10, atol=1e-12)
        assert all(torch.allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12) for k in a.params)
    assert not torch.equal(whole[0].params["head.weight"], whole[-1].params["head.weight"])  # it did move


def test_features_of_a_large_batch_are_computed_in_chunks_with_the_same_values() -> None:
    from metacore.models import FORWARD_CHUNK

    backbone = tiny_backbone()
    x = torch.randn(FORWARD_CHUNK + 37, 1, 28, 28, dtype=torch.float64)
    whole = backbone.features(backbone.params, x)  # autograd on: one call
    with torch.no_grad():
        chunked = backbone.features(backbone.params, x)
    assert torch.allclose(whole, chunked, rtol=1e-12, atol=1e-14)


def test_one_step_from_a_zero_head_on_scaled_features_is_the_cosine_prototype_classifier() -> None:
    backbone = tiny_backbone().with_feature_scale(7.0)
    learner = MAML(backbone, inner_lr=0.01, inner_steps=1, head="zero")
    task = random_task(way=4, shot=1, query=5, seed=5)
    step0, step1 = learner.adapt(task.support_x, task.support_y, task.query_x, task.query_y, way=4)
    assert torch.allclose(step0.query_logits, torch.zeros_like(step0.query_logits))  # step 0: exact chance
    support = backbone.features(backbone.params, task.support_x)
    query = backbone.features(backbone.params, task.query_x)
    assert torch.allclose(query.norm(dim=1), torch.full((len(query),), 7.0, dtype=query.dtype))
    cosine = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(support, dim=1).T
    assert torch.equal(step1.query_logits.argmax(1), cosine.argmax(1))  # the body has not moved yet: only the head


def test_the_feature_scale_is_a_parameter_that_adapts_and_survives_a_checkpoint(tmp_path) -> None:
    from metacore.checkpoint import load_checkpoint, save_checkpoint

    learner = MAML(tiny_backbone().with_feature_scale(5.0), inner_lr=0.1, inner_steps=3, head="zero")
    task = random_task(seed=1)
    last = run_to_end(learner.adapt(task.support_x, task.support_y, way=task.way))
    assert last.params["scale"].item() != 5.0 and learner.params["scale"].item() == 5.0
    save_checkpoint(tmp_path / "scaled.pt", learner)
    loaded, _ = load_checkpoint(tmp_path / "scaled.pt")
    assert loaded.backbone.kwargs["scale"] == 5.0 and torch.equal(loaded.params["scale"], learner.params["scale"])
    with pytest.raises(MetacoreError, match="already normalises its features"):
        loaded.backbone.with_feature_scale(5.0)
