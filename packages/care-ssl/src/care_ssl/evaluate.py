"""Frozen-backbone evaluation: weighted kNN and the linear probe (paper Sec. 4, "standard linear
classification protocol" following MoCo).

Both run on features of a backbone kept in eval mode (BN uses its running statistics). The linear probe
trains a Linear + BatchNorm1d head (weights N(0, 0.01)) with SGD, momentum 0.9, weight decay 0 and a
cosine schedule without warm-up (lr 0.2 at batch 256, as the paper's 80-epoch ImageNet protocol). Here it
trains on features extracted once from the un-augmented training images, which keeps a probe at CPU
cost; the kNN classifier is the cosine-similarity, temperature-weighted vote of Wu et al. (2018).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProbeResult", "extract_features", "knn_accuracy", "linear_probe", "probe_backbone"]


@torch.no_grad()
def extract_features(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of a backbone (``num_classes=0``) in eval mode -> (N, D) float32, (N,) labels.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        feats.append(model(x.to(device)).float().flatten(1).cpu())
        labels.append(torch.as_tensor(y).cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (%) of a cosine kNN vote weighted by exp(sim / temperature)."""
    if len(train_feats) == 0 or len(test_feats) == 0:
        raise ValueError("kNN needs at least one training and one test feature")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_feats, dim=1)
    test = F.normalize(test_feats, dim=1)
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test), 1024):
        sim, idx = (test[start : start + 1024] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start : start + 1024]).sum())
    return 100.0 * correct / len(test)


@dataclass
class ProbeResult:
    """Linear-probe outcome: train and test top-1 (%) and the trained head."""

    train_acc: float
    test_acc: float
    head: nn.Module


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 30,
    lr: float = 0.2,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Train BatchNorm1d(affine=False) + Linear on frozen features; report top-1 (%) on both splits."""
    if epochs < 1:
        raise ValueError(f"probe epochs must be >= 1, got {epochs}")
    g = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    dim = train_feats.shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))
    linear = head[1]
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=g)
        linear.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr * batch_size / 256, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = max(1, math.ceil(len(train_feats) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_feats), generator=g)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm1d needs two samples
            loss = F.cross_entropy(head(train_feats[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        train_acc = 100.0 * float((head(train_feats).argmax(1) == train_labels).float().mean())
        test_acc = 100.0 * float((head(test_feats).argmax(1) == test_labels).float().mean())
    return ProbeResult(train_acc, test_acc, head)


def probe_backbone(
    backbone: nn.Module,
    data: str = "digits",
    *,
    img_size: int = 64,
    in_chans: int = 3,
    epochs: int = 30,
    batch_size: int = 256,
    seed: int = 0,
    k: int = 20,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> dict[str, float]:
    """kNN and linear-probe top-1 (%) of a frozen backbone on ``data`` (train split -> val split).

    Images are un-augmented (the dataset's evaluation transform) for both splits; ``workers`` DataLoader
    processes read them.
    """
    from ctxnets_shared.training import build_datasets, make_loader
    from ctxnets_shared.training.transforms import Transform

    plain_tf = build_datasets(data, img_size=img_size, in_chans=in_chans, seed=seed).val.transform
    assert isinstance(plain_tf, Transform)
    splits = build_datasets(data, img_size=img_size, in_chans=in_chans, seed=seed, train_transform=plain_tf)
    backbone = backbone.to(device)
    loaders = [
        make_loader(s, batch_size, num_workers=workers, drop_last=False) for s in (splits.train, splits.val)
    ]
    f_tr, y_tr = extract_features(backbone, loaders[0], device)
    f_va, y_va = extract_features(backbone, loaders[1], device)
    probe = linear_probe(f_tr, y_tr, f_va, y_va, epochs=epochs, seed=seed)
    return {
        "knn_acc": knn_accuracy(f_tr, y_tr, f_va, y_va, k=k),
        "linear_acc": probe.test_acc,
        "linear_train_acc": probe.train_acc,
        "num_train": float(len(y_tr)),
        "num_val": float(len(y_va)),
    }
