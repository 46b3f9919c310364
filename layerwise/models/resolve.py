"""Resolve a model name to something ``from_pretrained`` can load, in the documented order:
a local directory, a local GGUF file, a bundled alias, then a hub id (``org/name``).

GGUF models (bundled or local) are dequantized once into a cache directory of ordinary fp32
safetensors checkpoints; later loads come from there in seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layerwise.runtime.errors import ModelError
from layerwise.runtime.io import check_free_space, follow_umask, temp_dir_beside
from layerwise.models.aliases import BUNDLED_MODELS, BundledModel

__all__ = ["ModelSource", "resolve_model", "default_cache_dir", "converted_gguf_bytes"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``path`` is a directory or a hub id for ``from_pretrained``."""

    name: str
    """The name the user gave."""
    path: str
    kind: str
    """``local``, ``bundled`` or ``hub``."""
    alias: str | None = None

    @property
    def portable_name(self) -> str:
        """The name another machine resolves to the same base: the alias of a bundled model, the hub id, or
        the absolute path of the user's own folder or .gguf file (never a path inside this installation)."""
        if self.kind == "bundled":
            return self.alias or self.name
        if self.kind == "hub":
            return self.name
        return str(Path(self.name).expanduser().resolve())


def default_cache_dir() -> Path:
    """``$LAYERWISE_CACHE``, else ``$XDG_CACHE_HOME/layerwise``, else ``~/.cache/layerwise``."""
    if os.environ.get("LAYERWISE_CACHE"):
        return Path(os.environ["LAYERWISE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layerwise"


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None,
                  trust_remote_code: bool = False) -> ModelSource:
    """Resolve ``name`` (directory, ``.gguf`` file, alias or hub id) to a loadable source.

    A bundled model whose files are joined by its package's own code (``gguf-parts``) runs that code only with
    ``trust_remote_code`` (``--trust-remote-code``), once: the joined file is cached."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model directory {path} has no config.json; expected a Hugging Face model folder")
        return ModelSource(name, str(path), "local")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        return ModelSource(name, str(convert_gguf(path, cache)), "local")
    if name.lower() in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[name.lower()]
        return ModelSource(name, str(_materialise_bundled(bundled, cache, trust_remote_code)), "bundled",
                           bundled.alias)
    if HUB_ID.fullmatch(name):  # org/name, or a name without a namespace (bert-base-uncased, gpt2)
        return ModelSource(name, name, "hub")
    raise ModelError(
        f"unknown model {name!r}: not a directory, not a .gguf file, not a bundled alias "
        f"({', '.join(BUNDLED_MODELS)}) and not a hub id (name or org/name)"
    )


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
"""A Hugging Face hub id: ``org/name``, or a model without a namespace (``bert-base-uncased``, ``gpt2``)."""


def _materialise_bundled(model: BundledModel, cache: Path, trust_remote_code: bool = False) -> Path:
    if not model.installed():
        model.locate()  # raises the install hint
    if model.fmt == "dir":
        return model.locate()
    if model.fmt == "gguf":
        return convert_gguf(model.locate(), cache)
    if model.fmt == "split-zip":
        return _unzip_split(model, cache)
    if model.fmt == "gguf-parts":
        return _assemble_gguf_parts(model, cache, trust_remote_code)
    raise AssertionError(f"unhandled bundled format {model.fmt}")


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def convert_gguf(gguf_path: Path, cache: Path) -> Path:
    """Dequantize a GGUF checkpoint once into ``cache`` as an fp32 safetensors model folder."""
    # -c2: conversions before 2026-12-05 stored a tied embedding only as lm_head.weight (see _untied_state);
    # a new folder name makes every such cache convert again instead of loading a random embedding
    target = cache / "gguf" / f"{gguf_path.stem}-{_file_key(gguf_path)}-c{CONVERSION}"
    if (target / "config.json").exists():
        return target
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":  # the format's magic number: refuse garbage before loading anything
            raise ModelError(f"{gguf_path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    import importlib.util

    if importlib.util.find_spec("gguf") is None:  # an optional dependency: the extra layerwise[gguf]
        raise ModelError(f"{gguf_path} is a GGUF file, and reading one needs the gguf package: "
                         "pip install 'layerwise[gguf]'")
    check_free_space(cache, converted_gguf_bytes(gguf_path), CACHE_FLAG, f"converting {gguf_path.name} to fp32")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerwise.runtime.progress import status

    with status(f"converting {gguf_path.name} once into {target} (later loads take seconds)"):
        folder, fname = str(gguf_path.parent), gguf_path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        except Exception as err:  # gguf and transformers raise many types for a damaged or unsupported file
            text = " ".join(str(err).split())[:200]
            raise ModelError(f"{gguf_path} cannot be read as a GGUF model ({type(err).__name__}: {text})") from err
        # A GGUF-loaded model is marked quantized and save_pretrained refuses it; after dequantization
        # the weights are plain fp32, so the marker is dropped.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _save_atomically(model, tokenizer, target)
    return target


CONVERSION = 2
"""Version of the GGUF conversion's output (part of the cache folder's name)."""

CACHE_FLAG = "--cache-dir"
"""The flag of the cache folder, named by the disk-space errors."""


def converted_gguf_bytes(gguf_path: Path) -> int:
    """Bytes of the fp32 model folder a GGUF file converts into: every tensor's elements x 4 (fp32
    safetensors), plus the tokenizer and config written from its metadata, bounded by 4 x the size of the
    metadata (the bytes before the first tensor: vocabulary and merges, which tokenizer.json spells out as
    JSON), plus 1 MiB. Read from the file's header alone (memory-mapped), in a second or two. SmolLM2-135M
    Q4_1: 546.3 MB estimated, 541.6 MB written."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf_path))
        elements = sum(int(t.n_elements) for t in reader.tensors)
        metadata = min((int(t.data_offset) for t in reader.tensors), default=gguf_path.stat().st_size)
    except Exception as err:  # the reader raises many types for a damaged file
        text = " ".join(str(err).split())[:200]
        raise ModelError(f"{gguf_path} cannot be read as a GGUF model ({type(err).__name__}: {text})") from err
    return elements * 4 + 4 * metadata + 2**20


def _distribution_bytes(distributions: tuple[str, ...]) -> int:
    """The size of the installed files of ``distributions`` (their RECORD): what joining their parts writes."""
    import importlib.metadata

    return sum(f.size or 0 for name in distributions for f in importlib.metadata.distribution(name).files or ())


def _save_atomically(model, tokenizer, target: Path) -> None:
    tmp = temp_dir_beside(target)
    try:
        from safetensors.torch import save_file

        # save_pretrained refuses GGUF-loaded models: write config and weights directly.
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_file(_untied_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        follow_umask(tmp)  # safetensors makes its files 0o600
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _untied_state(model) -> dict:
    """The weights to write, each stored tensor once under the name a model with *any* head loads it by.

    A tied output embedding (``lm_head.weight`` is ``embed_tokens.weight``) is written under the input
    embedding's name and its own name dropped, as ``save_pretrained`` does: a model loaded with another head
    (sequence classification) has no ``lm_head`` and would otherwise get a randomly initialised embedding."""
    state = model.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    out, seen = {}, {}
    inputs = model.get_input_embeddings()
    keep_first = names.get(id(inputs.weight)) if inputs is not None else None
    order = sorted(state, key=lambda k: k != keep_first)  # the input embedding's name wins a shared tensor
    for name in order:
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:  # a tied copy: loaded back through the model's tying, not from the file
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


def _unzip_split(model: BundledModel, cache: Path) -> Path:
    import zipfile

    target = cache / "bundled" / model.alias
    if target.exists():
        return _find_model_dir(target, model)
    parts = []
    for i, dist in enumerate(model.distributions, start=1):
        import importlib.metadata

        rel = model.location.replace("part_001", f"part_00{i}").replace(".zip.001", f".zip.00{i}")
        parts.append(Path(str(importlib.metadata.distribution(dist).locate_file(rel))))
    target.parent.mkdir(parents=True, exist_ok=True)
    joining = f"joining the parts of {model.alias}"
    check_free_space(target.parent, sum(part.stat().st_size for part in parts) + 2**20, CACHE_FLAG, joining)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.alias}.", dir=target.parent))
    try:
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as zf:  # the joined zip stays until its files are out
            unpacked = sum(info.file_size for info in zf.infolist())
            check_free_space(target.parent, unpacked + 2**20, CACHE_FLAG, f"unpacking {model.alias}")
            zf.extractall(tmp / "files")
        joined.unlink()
        os.replace(tmp / "files", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _find_model_dir(target, model)


def _assemble_gguf_parts(model: BundledModel, cache: Path, trust_remote_code: bool = False) -> Path:
    """The GGUF file joined by the package's ``assemble()``: third-party code, so it runs only when the user
    trusts it; written to a temporary name and renamed, so an interrupted join leaves no half file."""
    import importlib

    joined = cache / "bundled" / f"{model.alias}.gguf"
    if not joined.exists():
        if not trust_remote_code:
            raise ModelError(f"bundled model {model.alias!r} is joined from its parts by the "
                             f"{model.distributions[0]} package's own code (its assemble()); pass "
                             f"--trust-remote-code to run it once (the joined file is then cached in {joined})")
        joined.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(joined.parent, _distribution_bytes(model.distributions) + 2**20, CACHE_FLAG,
                         f"joining the parts of {model.alias}")
        package = importlib.import_module(model.distributions[0].replace("-", "_"))
        tmp = temp_dir_beside(joined)
        try:
            package.assemble(str(tmp / joined.name))
            os.replace(tmp / joined.name, joined)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return convert_gguf(joined, cache)


def _find_model_dir(root: Path, model: BundledModel) -> Path:
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "tokenizer.json").exists() or (config.parent / "vocab.txt").exists():
            return config.parent
    raise ModelError(f"bundled model {model.alias!r}: no model folder with config.json found under {root}")
