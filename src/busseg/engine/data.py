"""Keeps the model busy: preprocessed arrays held in memory as tensors, batches gathered by
index (no per-sample Python decoding), an epoch-seeded sampler so shuffling is reproducible and
a resumed run sees the same order as an uninterrupted one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from busseg.data import load_records
from busseg.data.preprocess import PreparedData, normalize, prepare
from busseg.errors import ConfigError


def is_main_process() -> bool:
    """True in the process that writes run files (rank 0 of node 0 under DDP)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def load_dataset(
    dataset: str,
    root: str | Path | None,
    recipe: dict,
    data_options: dict | None = None,
    include_normal: bool | None = None,
) -> PreparedData:
    """Records of ``dataset`` prepared at the recipe's image size (cached on disk)."""
    options = dict(data_options or {})
    if dataset == "phantom":
        options.setdefault("image_size", recipe["image_size"])
    normal = recipe.get("include_normal", False) if include_normal is None else include_normal
    records = load_records(dataset, root, include_normal=normal, **options)
    if not records:
        raise ConfigError(f"dataset {dataset!r} ({root}) holds no usable images")
    return prepare(records, image_size=recipe["image_size"], progress=is_main_process())


class InMemoryTensors:
    """Grey images in [0, 1] ``[N,1,S,S]`` (``pixels``), masks ``[N,1,S,S]`` and labels ``[N]``.

    Batches (:meth:`gather`) carry the [0, 1] pixels: augmentation acts on them, and the
    training task normalises each batch afterwards (:func:`busseg.data.preprocess.model_input`).
    :attr:`images` holds the normalised model input of every sample (evaluation without
    augmentation), computed on first use."""

    def __init__(self, prepared: PreparedData, normalization: str, in_channels: int = 1) -> None:
        self.normalization, self.in_channels = normalization, in_channels
        self.pixels = (torch.as_tensor(np.asarray(prepared.images), dtype=torch.float32) / 255.0)[:, None].contiguous()
        self._prepared_images = prepared.images
        self._images: torch.Tensor | None = None
        self.masks = torch.as_tensor(prepared.masks, dtype=torch.float32)[:, None].contiguous()
        self.labels = torch.as_tensor(np.asarray(prepared.labels), dtype=torch.long)
        self.ids = list(prepared.ids)
        self.index = {sid: i for i, sid in enumerate(self.ids)}

    @property
    def images(self) -> torch.Tensor:
        """Normalised model inputs ``[N,C,S,S]`` (on the device of :attr:`pixels`)."""
        if self._images is None:
            images = torch.as_tensor(np.asarray(normalize(self._prepared_images, self.normalization), np.float32))
            self._images = images[:, None].repeat(1, self.in_channels, 1, 1).contiguous().to(self.pixels.device)
        return self._images

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: str | torch.device) -> "InMemoryTensors":
        """Keep the whole (preprocessed, small) dataset on ``device``: batches are then gathered
        there and never cross the bus during training."""
        self.pixels = self.pixels.to(device)
        if self._images is not None:
            self._images = self._images.to(device)
        self.masks = self.masks.to(device)
        self.labels = self.labels.to(device)
        return self

    def indices(self, ids) -> list[int]:
        return [self.index[i] for i in ids]

    def gather(self, idx: list[int]) -> dict:
        t = torch.as_tensor(idx, dtype=torch.long, device=self.pixels.device)
        return {
            "image": self.pixels[t],  # [0, 1]: augmented, then normalised, by the training task
            "mask": self.masks[t],
            "label": self.labels[t],
            "index": t,
            # a plain int (not moved to the device): seeds this batch's augmentation
            "seed_key": int(idx[0]) if len(idx) else 0,
        }


class _IndexDataset(Dataset):
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return self.indices[i]


class EpochSeededSampler(Sampler[int]):
    """Permutation drawn from ``seed`` and the epoch (set by Lightning through ``set_epoch``),
    sharded across DDP ranks (each rank takes every ``world_size``-th element, padded so that
    all ranks see the same number of samples)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        order = (order * (1 + per_rank * self.world_size // max(1, self.n)))[: per_rank * self.world_size]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


def make_loader(
    data: InMemoryTensors,
    ids: list[str],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> DataLoader:
    positions = data.indices(ids)
    sampler = EpochSeededSampler(len(positions), seed, shuffle, rank, world_size)
    return DataLoader(
        _IndexDataset(positions),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=data.gather,
        drop_last=drop_last and len(positions) > batch_size,
        num_workers=0,
    )
