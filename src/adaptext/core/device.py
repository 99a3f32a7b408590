"""Devices and precision: where to run, and which mixed-precision mode this machine supports."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

import torch
from accelerate import PartialState

from adaptext.core.errors import ConfigError


def default_device(device: str | None) -> torch.device:
    """`device`, else the GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def on_cpu_only() -> bool:
    """True on a machine whose processes train on the CPU (no CUDA GPU)."""
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    """accelerate's view of this run's processes, the same in every module of a run.

    Under `torchrun` or `accelerate launch` on a machine without a GPU, accelerate takes the processes for one
    unless told they run on the CPU; then they are one data-parallel group over gloo, like GPUs over NCCL.
    """
    return PartialState(cpu=on_cpu_only())


# What `accelerate launch --use_fsdp / --use_deepspeed / --use_megatron_lm` set for the processes it starts.
SHARDED_LAUNCHES = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}


def check_launch() -> None:
    """Refuse launches that shard the model: the engine saves and evaluates whole models (docs/scaling.md)."""
    for variable, name in SHARDED_LAUNCHES.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"{name} launches are not supported yet: adaptext trains data-parallel (a whole model per process); "
                "launch with `torchrun --nproc-per-node N` or `accelerate launch --multi_gpu --num_processes N`"
            )


def resolve_precision(requested: str) -> str:
    """The accelerate mixed-precision mode for `train.precision` on this machine."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "no"
    if requested == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    return "no" if requested == "fp32" else requested


# accelerate's mixed-precision modes as torch autocast dtypes; "no" (fp32) has none.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of an accelerate mixed-precision mode (`resolve_precision`'s answer); None for fp32."""
    return AUTOCAST_DTYPES.get(precision)


# oneDNN, which runs torch's CPU matrix products in bf16, keeps a compiled kernel for every shape it has seen,
# 1,024 by default. Dynamic padding makes a shape of every batch length, and on the SST-2 speed benchmark those
# kernels held about 120 MB at the peak; 64 kept the same speed (docs/benchmarks.md). A value the user set wins.
KERNEL_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def limit_kernel_cache() -> None:
    """Bound oneDNN's per-shape kernel cache for this process unless the environment already sets it."""
    os.environ.setdefault(*KERNEL_CACHE)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def freeze_loaded_objects() -> None:
    """Collect garbage, then exempt every object alive now from later collections (`gc.freeze`).

    For a command that loads a model and then predicts until the process ends (`predict`, `serve`): torch,
    transformers and the model are hundreds of thousands of objects, and each full collection walked them all (about
    300 ms, set off every dozen or so large batches of predictions). A static student predicted a 100,000-row file
    1.5x as fast with them exempt (docs/benchmarks.md). Only for a process's own entry point, since it exempts the
    caller's objects too; they are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's `malloc_trim`; a no-op
    elsewhere).

    Called after training and again after the post-hoc models (calibration, a detector): the training copies are
    freed by then, but glibc keeps their pages, and the run's post-hoc steps (calibration, evaluation, explained
    errors) would otherwise raise the process's peak above training's own (docs/benchmarks.md, "Training memory").
    The collection walks every object alive: about 0.3 s with torch and transformers loaded, unless they are
    exempt (`freeze_loaded_objects`).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)
