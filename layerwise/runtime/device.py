"""Which device a command runs on, and joining the launcher's process group under torchrun."""

from __future__ import annotations

from typing import Any

from layerwise.runtime.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | None) -> Any:
    """``auto``/None picks CUDA when available; otherwise the named device, checked.

    Under a launcher (``torchrun``, ``accelerate launch``) a bare ``cuda`` is ``cuda:LOCAL_RANK`` and the
    process joins the launcher's process group (``layerwise.runtime.distributed.init_from_env``).
    """
    import torch

    from layerwise.runtime import distributed

    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"--device {device!r} is not a device (cpu, cuda, cuda:N, auto)") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
    dev = distributed.device_for_rank(dev)
    distributed.init_from_env(dev)
    return dev
