"""``ddp``: many processes, on one machine or many, under ``torchrun``.

PyTorch's own engine, nothing of kit's: ``torch.distributed`` for the process group and
collectives (gloo on CPU, nccl on CUDA with ``cuda:LOCAL_RANK``), and
``DistributedDataParallel`` for the gradients, with ``no_sync`` on accumulation
micro-batches. kit's loop runs unchanged on top; what is rank-aware (one run directory,
rank zero writing, every rank's RNG in the checkpoint, reduced metrics, agreed stops)
is decided once in core, not here.

Launch it with ``torchrun --nproc-per-node N -m kit run CFG`` (or ``kit run CFG
--nproc-per-node N``, which hands off to torchrun). Started without torchrun it is one
process, said once.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

import kit

if TYPE_CHECKING:
    from kit import Trainer

__all__ = ["DDPBackend"]

T = TypeVar("T")

_DDP_PARAMETERS = frozenset(inspect.signature(DistributedDataParallel.__init__).parameters)
_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value is not None and value.isdigit() else None


class DDPBackend(kit.Backend):
    """DistributedDataParallel under torchrun: gloo on CPU, nccl on CUDA."""

    name: ClassVar[str] = "ddp"

    class Options(BaseModel):
        """``backend: {ddp: {…}}``."""

        model_config = ConfigDict(extra="forbid")

        find_unused_parameters: bool = Field(
            False, description="let parameters that get no gradient in a step exist (slower)")
        sync_buffers: bool = Field(
            True, description="send rank 0's buffers (batch norm statistics) to every rank each forward")
        timeout_s: float = Field(
            600, gt=0, le=86_400,
            description="how long a collective waits for a rank that stopped answering")
        process_group_backend: Literal["auto", "gloo", "nccl"] = Field(
            "auto", description="auto: nccl when training on CUDA, else gloo")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self._owns_group = False
        self._cuda = False
        self._cpu_group: Any = None
        self._ddp: DistributedDataParallel | None = None

    # -- lifecycle ------------------------------------------------------------------

    def launch(self, trainer: Trainer) -> None:
        rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
        if rank is None or world is None:
            kit.say("backend ddp outside torchrun: one process (launch several with "
                    "`kit run CFG --nproc-per-node N` or `torchrun --nproc-per-node N -m kit run CFG`)")
            return
        self.rank, self.world_size, self.local_rank = rank, world, local or 0
        self._cuda = self._wants_cuda(trainer.config.training.device)
        if dist.is_initialized():  # someone else's group (an embedding script): use it, keep it
            self._cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
            return
        group_backend = self.options.process_group_backend
        if group_backend == "auto":
            group_backend = "nccl" if self._cuda else "gloo"
        if self._cuda:
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend=group_backend,
                                timeout=datetime.timedelta(seconds=self.options.timeout_s))
        self._owns_group = True
        if group_backend != "gloo":  # small control messages and objects go over the CPU
            self._cpu_group = dist.new_group(backend="gloo",
                                             timeout=datetime.timedelta(seconds=self.options.timeout_s))

    def _wants_cuda(self, requested: str) -> bool:
        if requested.startswith("cuda:"):
            raise kit.ConfigError(
                f"under ddp each process trains on cuda:LOCAL_RANK, so {requested} cannot be honoured",
                key="training.device", hint="set training.device: cuda (or auto)")
        return requested == "cuda" or (requested == "auto" and torch.cuda.is_available())

    def teardown(self) -> None:
        self._ddp = None
        gc.collect()  # DDP's reducer, if a cycle holds it: freed before its group, never at exit
        if self._owns_group and dist.is_initialized():
            self._owns_group = False
            dist.destroy_process_group()

    # -- placement ------------------------------------------------------------------

    def device(self, requested: str) -> torch.device:
        if self.world_size > 1 and self._cuda:
            return torch.device("cuda", self.local_rank)
        if self.world_size > 1 and requested in ("auto", "mps"):
            return torch.device("cpu")  # gloo: mps has no collectives
        return super().device(requested)

    def sampler(self, size: int, *, seed: int, shuffle: bool, train: bool) -> Sampler[int]:
        return kit.EpochSampler(size, seed=seed, shuffle=shuffle, rank=self.rank,
                                world_size=self.world_size, pad=train)

    def wrap(self, model: torch.nn.Module, trainer: Trainer) -> Callable[..., Any]:
        if self.world_size == 1 and not dist.is_initialized():
            return super().wrap(model, trainer)
        cuda = model_device(model).type == "cuda"
        # torch 2.13 renamed broadcast_buffers; the new name keeps the sync at construction
        buffers = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_PARAMETERS else "broadcast_buffers"
        options: dict[str, Any] = {buffers: self.options.sync_buffers,
                                   "find_unused_parameters": self.options.find_unused_parameters}
        self._ddp = DistributedDataParallel(model, device_ids=[self.local_rank] if cuda else None, **options)
        if trainer.config.training.compile:
            return torch.compile(self._ddp)
        return self._ddp

    def unwrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """Evaluation runs the plain module: DistributedDataParallel's forward may talk to the
        other ranks (buffers), and ranks may see different numbers of evaluation batches."""
        return self._ddp.module if self._ddp is not None else forward

    # -- math -----------------------------------------------------------------------

    def no_backward_sync(self, forward: Any, *, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if enabled and self._ddp is not None:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    # -- collectives ----------------------------------------------------------------

    def _group(self, tensor: torch.Tensor | None = None) -> Any:
        """The CPU (gloo) group for CPU tensors and objects when the main one is nccl."""
        if tensor is not None and tensor.device.type != "cpu":
            return None
        return self._cpu_group

    def all_reduce(self, tensor: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        dist.all_reduce(tensor, op=_OPS[op], group=self._group(tensor))
        if op == "mean":  # gloo has no AVG
            tensor /= self.world_size
        return tensor

    def all_gather_object(self, obj: T) -> list[T]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._group())
        return out

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        if self.world_size == 1:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=src, group=self._group())
        return box[0]  # type: ignore[no-any-return]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self._group())


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter is (cpu for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
