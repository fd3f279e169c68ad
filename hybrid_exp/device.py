"""The device policy: where a config trains, at which precision, and how the machine is named in
the record. torch is imported when asked: the run identity (hybrid_exp.schema) reads this, and
the analysis reads the identity without a GPU in mind."""
import os
import platform
from pathlib import Path


def trains_on_gpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts the training on a GPU here (``auto``: if there is one)."""
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision for ``auto``: bf16 autocast when training on a GPU that has bf16,
    fp32 otherwise (CPUs)."""
    if precision != "auto":
        return precision
    import torch

    return "bf16-mixed" if trains_on_gpu(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


def machine(gpu: bool = False) -> str:
    """The machine, for the record: the current GPU's name and memory, or the CPU's model."""
    if gpu:
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), None) if cpuinfo.is_file() else None
    return f"CPU {model or platform.machine()}, {os.cpu_count()} cores"
