"""What a recorded (CUDA-graph) outer step refuses, with clear messages; on a GPU, that it equals the eager step."""

from __future__ import annotations

import pytest
import torch

from conftest import random_task, tiny_backbone
from metacore.algorithms import MAML, MetaSGD, Reptile
from metacore.capture import CapturedOuterStep, check_capturable
from metacore.data import EpisodeSampler, open_dataset
from metacore.errors import MetacoreError
from metacore.images import CHARACTER_SPEC
from test_data import make_class_folders


@pytest.fixture
def sampler(tmp_path) -> EpisodeSampler:
    make_class_folders(tmp_path / "toy", {f"c{i}": 4 for i in range(4)})
    return EpisodeSampler(open_dataset(tmp_path, "toy", None, CHARACTER_SPEC), 2, 1, 1)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (dict(device="cpu"), "needs a CUDA GPU"),
        (dict(algorithm=Reptile), "not 'reptile'"),
        (dict(algorithm=MetaSGD), "not 'metasgd'"),
        (dict(way="2-3"), "one task shape"),
        (dict(cosine=True), "drop --cosine"),
    ],
)
def test_setups_a_graph_cannot_serve_are_refused(sampler: EpisodeSampler, setup: dict, message: str) -> None:
    learner = setup.get("algorithm", MAML)(tiny_backbone())
    if "way" in setup:
        sampler = EpisodeSampler(sampler.dataset, setup["way"], 1, 1)
    device = torch.device(setup.get("device", "cuda"))  # only its type is read: no GPU needed
    with pytest.raises(MetacoreError, match=message):
        check_capturable(learner, device, sampler, setup.get("cosine", False))


def test_an_optimizer_that_cannot_be_captured_is_refused() -> None:
    learner = MAML(tiny_backbone())
    with pytest.raises(MetacoreError, match="capturable=True"):
        CapturedOuterStep(learner, torch.optim.Adam(learner.params.values()), [random_task()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="recording a CUDA graph needs a CUDA GPU")
def test_replayed_steps_train_like_eager_steps() -> None:
    batches = [[random_task(seed=10 * b + s).to("cuda", torch.float32) for s in range(4)] for b in range(3)]
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        learner = MAML(tiny_backbone().to("cuda", torch.float32), 0.3, 1, "zero")
        learner.params = {k: v.clone().requires_grad_(True) for k, v in learner.params.items()}
        optimizer = torch.optim.Adam(learner.params.values(), 1e-3, capturable=True)
        step = CapturedOuterStep(learner, optimizer, batches[0]) if graph else None
        losses = [step(b)["loss"] if step else learner.outer_step(optimizer, b, "vmap")["loss"] for b in batches]
        results.append((losses, {k: v.detach() for k, v in learner.params.items()}))
    (eager_losses, eager), (graph_losses, graphed) = results
    assert graph_losses == pytest.approx(eager_losses, abs=1e-6)
    assert all(torch.allclose(graphed[k], eager[k], atol=1e-6) for k in eager)
