"""The linear probe of LP-FT (Kumar et al. 2022): fit the classifier on frozen features before fine-tuning.

A fresh classifier on pretrained features first sends large, random gradients into the backbone and
distorts the features the fine-tune should keep. Fitting the head first, as a multinomial logistic
regression on the pooled features of the training images (computed once, through the eval
preprocessing, in eval mode), takes seconds, and the fine-tune then starts from a head that already
separates the classes. The L2 strength is chosen by stratified k-fold cross-validation on the cached
features; the convex problem is solved with L-BFGS (the same optimum scikit-learn's
``LogisticRegression`` finds: tests/test_finetune.py).

Under torchrun every process computes the features of its share of the images; they are gathered,
every process fits the same features, and rank 0's head is broadcast (float results may differ
across CPUs), so every replica starts from the same classifier. The cached features take
4 x images x feature-width bytes (1,280 for B0/Lite0: 256 MB for 50,000 images).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from src.data.dataset import Batch
from src.data.transforms import to_device_normalized
from src.runtime.distributed import is_initialized

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # of mean cross-entropy + l2 / 2 * ||W||^2 (per-image scale)
FOLDS = 3
MAX_ITERATIONS = 200  # L-BFGS iterations: the problem is small and convex


@dataclass
class Probe:
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    l2: float  # the chosen strength
    cv_accuracy: float  # its mean held-out accuracy over the folds (nan with too few images to fold)
    train_accuracy: float


@torch.no_grad()
def pooled_features(model: nn.Module, loader: DataLoader, mean: tuple, std: tuple, device: torch.device,
                    channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), labels (N,)) of this process's share of ``loader``: the network's pooled
    features, the classifier's input, in eval mode. Unreadable images are left out."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for batch in loader:
        assert isinstance(batch, Batch)
        if not batch.labels.numel():
            continue
        x = to_device_normalized(batch.images, mean, std, device, channels_last)
        features.append(torch.flatten(model.avgpool(model.forward_features(x)), 1).float().cpu())
        labels.append(batch.labels)
    model.train(was_training)
    dim = model.classifier[1].in_features
    return (torch.cat(features) if features else torch.empty(0, dim), torch.cat(labels) if labels
            else torch.empty(0, dtype=torch.int64))


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: argmin mean CE(x W^T + b, y) + l2 / 2 * ||W||^2 (bias free),
    by L-BFGS in float64 (deterministic for the same inputs)."""
    x, y = features.double(), labels.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def _folds(labels: torch.Tensor, folds: int) -> list[torch.Tensor]:
    """Stratified fold index of every image (class by class, round robin in image order)."""
    fold = torch.empty_like(labels)
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        fold[where] = torch.arange(len(where)) % folds
    return [(fold == k) for k in range(folds)]


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Probe:
    """The probe with the L2 strength of the best mean held-out accuracy over stratified folds (ties:
    the stronger regularisation); with fewer than FOLDS images in some class, the middle strength."""
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) and int(present.min()) >= FOLDS:
        masks = _folds(labels, FOLDS)
        scores = []
        for l2 in L2_GRID:
            correct = 0
            for held in masks:
                w, b = fit_logistic(features[~held], labels[~held], num_classes, l2)
                correct += int(((features[held] @ w.T + b).argmax(1) == labels[held]).sum())
            scores.append((correct / len(labels), l2))
        cv_accuracy, l2 = max(scores, key=lambda s: (s[0], s[1]))
    else:
        cv_accuracy, l2 = float("nan"), L2_GRID[len(L2_GRID) // 2]
    weight, bias = fit_logistic(features, labels, num_classes, l2)
    train_accuracy = float(((features @ weight.T + bias).argmax(1) == labels).float().mean()) if len(labels) else 0.0
    return Probe(weight, bias, l2, cv_accuracy, train_accuracy)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``tensor`` (different counts per process), in rank order, on every process."""
    if not is_initialized():
        return tensor
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat([part for part in parts if part is not None])


def probe_head(model: nn.Module, loader: DataLoader, num_classes: int, mean: tuple, std: tuple,
               device: torch.device, channels_last: bool) -> Probe:
    """Fit the probe on the training images of ``loader`` (this process's share) and put it into
    ``model.classifier[1]`` on every process."""
    features, labels = pooled_features(model, loader, mean, std, device, channels_last)
    features, labels = gather(features), gather(labels)
    probe = fit_probe(features, labels, num_classes)
    linear = model.classifier[1]
    with torch.no_grad():
        linear.weight.copy_(probe.weight.to(linear.weight.device))
        linear.bias.copy_(probe.bias.to(linear.bias.device))
        if is_initialized():  # rank 0's fit for all (float ties across CPUs)
            dist.broadcast(linear.weight, src=0)
            dist.broadcast(linear.bias, src=0)
    return probe
