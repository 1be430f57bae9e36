"""``lightning``: kit's own loop on Lightning Fabric's accelerators, strategies and precision.

Fabric decides where tensors live and how they move: the accelerator and device, the
process group and ``DistributedDataParallel`` (strategy ``ddp``), and mixed or true
low precision with its grad scaler. kit keeps everything else, unchanged from the
``torch`` and ``ddp`` backends: the loop and its hooks in the same order, the
data order (kit's sampler, sharded by rank), every rank's RNG, checkpoints (atomic
commits, manifests, every format) and so the bitwise-exact resume::

    backend: {lightning: {accelerator: auto, devices: 2, strategy: ddp, precision: bf16-mixed}}

Processes start through Fabric's own launcher (``kit run CFG`` with ``devices: 2`` runs
the same command once more per extra device, as Lightning does) or under ``torchrun``
(``kit run CFG --nproc-per-node 2``), whose processes Fabric joins.

Only strategies whose model is whole on every rank are offered (``auto``, ``ddp``,
``ddp_find_unused_parameters_true``): kit's checkpoints hold the whole model, written by
rank zero. Spawning strategies are refused too: they run a function in fresh processes,
where kit runs the whole command in each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

import kit

if TYPE_CHECKING:
    from torch.utils.data import Sampler

    from kit import Trainer

__all__ = ["Accelerator", "LightningBackend", "Precision", "lightning_accelerator", "lightning_precision"]

T = TypeVar("T")

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"]
Accelerator = Literal["auto", "cpu", "cuda", "gpu", "mps"]
_FROM_KIT: dict[str, Precision] = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
"""``training.precision`` in Fabric's words, when the backend's own ``precision`` is unset."""


def lightning_precision(chosen: Precision | None, kit_precision: str, backend: str) -> Precision:
    """The backend's ``precision``, else ``training.precision`` in Lightning's words; both set
    and disagreeing is refused (the lightning backends share this)."""
    implied = _FROM_KIT.get(kit_precision, "32-true")
    if chosen is None:
        return implied
    if kit_precision != "32" and chosen != implied:
        raise kit.ConfigError(
            f"training.precision {kit_precision} and backend.{backend}.precision {chosen} disagree",
            key=f"backend.{backend}.precision", hint="set one of them only")
    return chosen


def lightning_accelerator(chosen: Accelerator, device: str, backend: str) -> Accelerator:
    """The backend's ``accelerator``; ``auto`` follows ``training.device`` when that is set. Lightning
    picks the device index itself, so ``cuda:N`` is refused rather than silently not honoured."""
    if chosen != "auto" or device == "auto":
        return chosen
    if device.startswith("cuda:"):
        raise kit.ConfigError(f"the {backend} backend picks the device index itself, so {device} "
                              "cannot be honoured", key="training.device", hint="set training.device: cuda")
    return device  # type: ignore[return-value]  # cpu, cuda or mps: TrainingConfig's choices


class LightningBackend(kit.Backend):
    """kit's loop on a ``lightning.Fabric``: its device, processes, DDP and precision."""

    name: ClassVar[str] = "lightning"

    class Options(BaseModel):
        """``backend: {lightning: {…}}``, passed to ``lightning.Fabric``."""

        model_config = ConfigDict(extra="forbid")

        accelerator: Accelerator = Field(
            "auto", description="auto: what training.device says, else the best available")
        devices: int | Literal["auto"] = Field(
            1, description="processes on this machine, one per device; 'auto': every device")
        num_nodes: int = Field(1, ge=1, description="machines (launch each with torchrun)")
        strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = Field(
            "auto", description="auto: ddp with several devices, else one device")
        precision: Precision | None = Field(
            None, description="Fabric's precision; default: training.precision (32, bf16, 16)")

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.fabric: L.Fabric | None = None
        self._module: Any = None  # the _FabricModule that training runs forward through

    # -- lifecycle ------------------------------------------------------------------

    def launch(self, trainer: Trainer) -> None:
        """Build the Fabric and start (or join) the other processes, as Lightning does."""
        options, training = self.options, trainer.config.training
        precision = lightning_precision(options.precision, training.precision, self.name)
        accelerator = lightning_accelerator(options.accelerator, training.device, self.name)
        try:
            self.fabric = L.Fabric(accelerator=accelerator, devices=options.devices,
                                   num_nodes=options.num_nodes, strategy=options.strategy,
                                   precision=precision)
            self.fabric.launch()
        except (ValueError, RuntimeError, TypeError, ImportError) as exc:  # Fabric's own checks
            if isinstance(exc, kit.KitError):
                raise
            raise kit.ConfigError(f"Lightning Fabric refused it: {_first_line(exc)}",
                                  key="backend.lightning",
                                  hint="check accelerator, devices, strategy and precision") from None
        fabric = self.fabric
        self.rank, self.local_rank = fabric.global_rank, fabric.local_rank
        self.world_size = fabric.world_size

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        self.scaler = None  # Fabric's precision plugin scales, not the base class's scaler
        self.amp_dtype = None

    def teardown(self) -> None:
        self._module = None
        if self.fabric is not None and self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
        self.fabric = None

    def state_dict(self) -> dict[str, Any]:
        """Fabric's precision plugin state: the grad scaler under ``16-mixed``."""
        return {"precision": self._fabric.strategy.precision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("precision")
        if isinstance(saved, dict) and saved:
            self._fabric.strategy.precision.load_state_dict(saved)

    @property
    def _fabric(self) -> L.Fabric:
        if self.fabric is None:
            raise kit.KitError("the lightning backend was used before launch()")
        return self.fabric

    # -- placement ------------------------------------------------------------------

    def device(self, requested: str) -> torch.device:
        return self._fabric.device

    def sampler(self, size: int, *, seed: int, shuffle: bool, train: bool) -> Sampler[int]:
        return kit.EpochSampler(size, seed=seed, shuffle=shuffle, rank=self.rank,
                                world_size=self.world_size, pad=train)

    def wrap(self, model: torch.nn.Module, trainer: Trainer) -> Callable[..., Any]:
        """Fabric's module: DDP with several processes, and the precision's forward context."""
        if trainer.config.training.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self._module = self._fabric.setup_module(model)
        return self._module  # type: ignore[no-any-return]

    def unwrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """Evaluation runs the module itself (DDP's forward may talk to the other ranks, which
        may see different numbers of batches), with the precision's conversions around it."""
        if self.world_size == 1 or self._module is None:
            return forward
        module = self._module.module
        precision = self._fabric.strategy.precision

        def evaluate(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = precision.convert_input((args, kwargs))
            with precision.forward_context():
                out = module(*args, **kwargs)
            return precision.convert_output(out)

        return evaluate

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return self._fabric.setup_optimizers(optimizer)  # type: ignore[return-value]

    # -- math -----------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision's forward context, for the loss beside the model's forward."""
        return self._fabric.autocast()

    def no_backward_sync(self, forward: Any, *, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        if enabled and self.world_size > 1 and self._module is not None:
            return self._fabric.no_backward_sync(self._module)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self._fabric.backward(loss)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self._fabric.strategy.precision.unscale_gradients(_plain(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, *, clip_grad_norm: float | None) -> None:
        """Clip (gradients are unscaled by then), then Fabric's step: scaler step and update."""
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, clip_grad_norm)
        optimizer.step()

    def skip_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = getattr(self._fabric.strategy.precision, "scaler", None)
        if scaler is not None:
            scaler.update()

    # -- collectives ----------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return self._fabric.all_reduce(tensor, reduce_op=op)  # type: ignore[return-value]

    def all_gather_object(self, obj: T) -> list[T]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        if self.world_size == 1:
            return obj
        return self._fabric.broadcast(obj, src=src)

    def barrier(self) -> None:
        if self.world_size > 1:
            self._fabric.barrier()


def _plain(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer under Fabric's wrapper: the grad scaler keys its state by it."""
    return getattr(optimizer, "optimizer", optimizer)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
