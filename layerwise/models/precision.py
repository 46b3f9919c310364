"""The dtype a model's weights are loaded in, and quantized loading: what the device allows, checked before any
weight is read.

``auto`` is bfloat16 on a CUDA device that supports it and float32 elsewhere (the CPU computes bf16 slowly and
without fused kernels, so a CPU run stays fp32 unless bf16 is asked for). float16 needs a CUDA device: CPU
kernels for it are incomplete (no fp16 matmul in every build, no GradScaler), so it is refused there rather
than silently run in float32. Quantized weights (4-bit NF4, 8-bit) go through transformers'
``BitsAndBytesConfig`` and need the ``bitsandbytes`` package and a CUDA device.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from layerwise.runtime.errors import ConfigError

__all__ = ["DTYPES", "QUANTIZATIONS", "resolve_dtype", "quantization_config", "check_quantization"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Values of ``--dtype``: ``auto`` picks per device (see :func:`resolve_dtype`)."""
QUANTIZATIONS = ("none", "4bit", "8bit")
"""Values of ``--quantize``: frozen base weights in 4-bit NF4 or 8-bit (bitsandbytes), adapters on top."""


def resolve_dtype(dtype: str, device: Any, flag: str = "--dtype") -> str:
    """The concrete dtype name (``float32``, ``bfloat16`` or ``float16``) for ``dtype`` on ``device``.

    ``auto``: bfloat16 on a CUDA device that supports it, else float32. A dtype the device lacks is a
    :class:`ConfigError` naming ``flag`` and the dtypes this device allows.
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"{flag} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    allowed = _supported(dev)
    if dtype == "auto":
        return "bfloat16" if dev.type == "cuda" and "bfloat16" in allowed else "float32"
    if dtype not in allowed:
        raise ConfigError(f"{flag} {dtype} is not supported on {dev} (allowed there: "
                          f"{', '.join(('auto', *allowed))}){_why(dev, dtype)}")
    return dtype


def _supported(dev: Any) -> tuple[str, ...]:
    import torch

    if dev.type == "cuda":
        # bf16 needs compute capability 8.0 (Ampere) or newer; torch answers for the current device
        with torch.cuda.device(dev):
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("float32", "bfloat16", "float16") if bf16 else ("float32", "float16")
    if dev.type == "cpu":
        return ("float32", "bfloat16")
    return ("float32",)


def _why(dev: Any, dtype: str) -> str:
    if dev.type == "cpu" and dtype == "float16":
        return "; float16 needs a CUDA device (use --dtype bfloat16 for 16-bit weights on the CPU)"
    if dev.type == "cuda" and dtype == "bfloat16":
        return "; bfloat16 needs compute capability 8.0 or newer (use --dtype float16)"
    return ""


def check_quantization(quantize: str, device: Any, flag: str = "--quantize") -> None:
    """Refuse a quantized load the platform cannot do: without ``bitsandbytes`` or without a CUDA device."""
    import torch

    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"{flag} must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} {quantize} needs the bitsandbytes package, which is not installed (pip install "
                          f"bitsandbytes; on a CUDA machine), or use {flag} none")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"{flag} {quantize} needs a CUDA device (the run is on {dev}); use --device cuda or "
                          f"{flag} none")


def quantization_config(quantize: str, compute_dtype: str) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (None for ``none``): 4-bit NF4 with double
    quantization computing in ``compute_dtype`` (QLoRA's recipe), or 8-bit (LLM.int8)."""
    if quantize == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    return BitsAndBytesConfig(load_in_8bit=True)
