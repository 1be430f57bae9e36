"""What a data factory returns, and the loaders kit builds from datasets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from kit.config import DataConfig
from kit.errors import ConfigError

__all__ = ["Data", "EpochSampler", "build_loaders", "shutdown_workers"]


@dataclass
class Data:
    """A data factory's result: datasets (kit builds loaders) or ready ``DataLoader``\\ s."""

    train: Any
    val: Any = None
    test: Any = None


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on ``(seed, epoch)``, never on global RNG state.

    That makes data order reproducible whatever the model draws from the RNG, and
    lets a resumed run rebuild any epoch's order and start inside it in O(1)
    (``set_epoch(epoch, start=samples_done)``) instead of replaying batches.

    With several ranks, rank ``r`` of ``w`` reads every ``w``-th index of the epoch's order
    from the ``r``-th on, so ``w`` ranks with batch size ``b`` together read exactly the
    global batches one process would with ``w * b``. ``pad`` (training) repeats the
    order's first indices until every rank has as many (ranks must step together);
    without it (evaluation), no sample counts twice and ranks may differ by one.
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, pad: bool = False) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch to draw, and skip this rank's first ``start`` samples (a resumed epoch)."""
        self.epoch = epoch
        self.start = start

    def order(self) -> list[int]:
        """This rank's indices for the epoch, before skipping."""
        if not self.shuffle:
            indices = list(range(self.size))
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.size, generator=generator).tolist()
        if self.world_size == 1:
            return indices
        if self.pad and self.size % self.world_size:
            extra = self.world_size - self.size % self.world_size
            indices += (indices * (extra // max(self.size, 1) + 1))[:extra]
        return indices[self.rank::self.world_size]

    def _per_rank(self) -> int:
        if self.world_size == 1:
            return self.size
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.start)


def _ignore_stop_signals(worker_id: int) -> None:
    """In a loader's worker process: leave stop signals to the main process.

    A whole process group is signalled at once (``scancel``, systemd, Ctrl-C), and a worker
    that died of it would fail the run before the main process could save its checkpoint.
    SIGINT and SIGUSR1 are ignored; the first SIGTERM too, but not a second: the main
    process's shutdown of a worker that does not stop in time is a SIGTERM, and so is a
    second signal to abort at once.
    """
    import signal

    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)

    def first_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, first_sigterm)


def shutdown_workers(loaders: Iterable[Any]) -> None:
    """Stop the worker processes a loader keeps between passes (``persistent_workers``).

    Done when a run ends, rather than left to interpreter exit, where multiprocessing
    would terminate them with the SIGTERM they ignore once. torch has no public call for
    this; Lightning stops them the same way.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            loader._iterator = None


def _as_data(value: Any) -> Data:
    if isinstance(value, Data):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"train", "val", "test"}
        if unknown or "train" not in value:
            raise ConfigError(
                f"the data factory returned a mapping with keys {sorted(value)}",
                key="data.target",
                hint="return kit.Data(train=…, val=…, test=…) or a dict with those keys",
            )
        return Data(**value)
    if isinstance(value, Sequence) and not isinstance(value, str) and 1 <= len(value) <= 3:
        return Data(*value)
    raise ConfigError(
        f"the data factory returned {type(value).__name__}",
        key="data.target",
        hint="return kit.Data(train=…, val=…, test=…)",
    )


class SamplerFactory(Protocol):
    """What :meth:`kit.Backend.sampler` is: this rank's indices of a dataset of ``size``."""

    def __call__(self, size: int, *, seed: int, shuffle: bool, train: bool) -> Sampler[int]: ...


def _one_process(size: int, *, seed: int, shuffle: bool, train: bool) -> Sampler[int]:
    return EpochSampler(size, seed=seed, shuffle=shuffle)


def build_loaders(
    value: Any, config: DataConfig, *, inference_batch_size: int | None, seed: int, pin_memory: bool,
    sampler: SamplerFactory = _one_process, world_size: int = 1,
) -> tuple[DataLoader[Any], DataLoader[Any] | None, DataLoader[Any] | None]:
    """Loaders for train/val/test; datasets get the backend's seeded sampler (an
    :class:`EpochSampler` for this rank).

    With several ranks, a ready-made ``DataLoader`` or an ``IterableDataset`` is refused:
    kit cannot know which of its samples belong to which rank.
    """
    data = _as_data(value)

    def loader(split: str, obj: Any, train: bool) -> DataLoader[Any] | None:
        if obj is not None and world_size > 1 and (isinstance(obj, DataLoader | IterableDataset)):
            raise ConfigError(
                f"the data factory returned {split} as a {type(obj).__name__}, which kit cannot shard "
                f"over {world_size} processes", key="data.target",
                hint="return map-style Datasets (kit.Data(train=…, …)); kit gives each rank its share")
        if obj is None or isinstance(obj, DataLoader):
            return obj
        if not isinstance(obj, Dataset | IterableDataset):
            raise ConfigError(
                f"{split} is a {type(obj).__name__}, not a Dataset or DataLoader",
                key="data.target",
            )
        chosen = None
        # A loader's own generator: creating its iterator then draws nothing from the global
        # RNG, so a resumed run (which creates one more) keeps the RNG stream of a straight one.
        generator = torch.Generator().manual_seed(seed)
        if not isinstance(obj, IterableDataset):
            chosen = sampler(len(obj), seed=seed, shuffle=train and config.shuffle, train=train)  # type: ignore[arg-type]
        return DataLoader(
            obj,
            worker_init_fn=_ignore_stop_signals if config.num_workers else None,
            batch_size=config.batch_size if train else (inference_batch_size or config.batch_size),
            sampler=chosen,
            num_workers=config.num_workers,
            pin_memory=pin_memory,
            drop_last=config.drop_last and train,
            persistent_workers=config.num_workers > 0,
            generator=generator,
        )

    train = loader("train", data.train, True)
    if train is None:
        raise ConfigError("the data factory returned no training data", key="data.target")
    return train, loader("val", data.val, False), loader("test", data.test, False)
