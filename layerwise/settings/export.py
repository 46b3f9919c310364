"""What ``layerwise export`` writes, and from which selection."""

from __future__ import annotations

from dataclasses import dataclass

from layerwise.settings.fields import flag, one_of

__all__ = ["ExportTarget", "FORMATS"]

FORMATS = ("peft", "axolotl", "json")
"""``--format`` choices: a peft config folder, axolotl's LoRA keys, plain JSON."""


@dataclass(frozen=True)
class ExportTarget:
    """The format of an exported selection and where the selection comes from."""

    format: str = flag("peft", choices=FORMATS)
    """peft (adapter_config.json for LoraConfig.from_pretrained), axolotl (axolotl.yaml: its LoRA keys) or
    json (selection.json: layers, ranks, metric, policy, card fingerprint)"""
    from_run: str | None = None
    """a finished `layerwise train` or `run` folder: export the selection it trained (its selection.json and
    adapter) instead of --card and the selection flags"""

    def __post_init__(self) -> None:
        one_of(self, "format", FORMATS)
