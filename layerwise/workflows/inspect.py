"""The ``layerwise inspect`` job: the model's fingerprint, its layer stack and a data summary, as plain data."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["inspect_model_and_task", "render_inspection"]


def inspect_model_and_task(model: Any, data: Any) -> dict[str, Any]:
    """Load the task and the model (a :class:`~layerwise.settings.ModelSource` and
    :class:`~layerwise.settings.DataSource`, or their names) and summarise both as JSON-ready data."""
    from layerwise.workflows.prepare import data_source, prepare

    data = data_source(data)
    ready = prepare(model, data, "cpu")
    loaded = ready.loaded
    return {
        "model": {**loaded.fingerprint, "class": type(loaded.model).__name__, "source": loaded.source.path,
                  "head": loaded.head},
        "layers": _stack_summary(ready.stack),
        "data": _data_summary(ready.task, loaded.tokenizer, data.max_length),
    }


def _stack_summary(stack) -> dict[str, Any]:
    blocks = []
    for block in stack.blocks:
        roles: dict[str, list[int]] = {}
        for lin in block.linears:
            roles.setdefault(lin.role, [lin.in_features, lin.out_features])
        params = sum(p.numel() for p in block.module.parameters())
        blocks.append({"index": block.index, "name": block.name, "params": params, "roles": roles})
    return {"path": stack.path, "count": len(stack), "layers_pattern": stack.layers_pattern, "blocks": blocks}


def _data_summary(task_data, tokenizer, max_length: int, sample: int = 512) -> dict[str, Any]:
    task = task_data.task
    summary: dict[str, Any] = {"task": task.name, "kind": task.kind, "source": task_data.source,
                               "train": len(task_data.train), "dev": len(task_data.dev),
                               "metrics": list(task.metrics), "skipped": dict(task_data.skipped)}
    if task.kind == "classification":
        counts = Counter(ex.label for ex in task_data.train)
        names = task.label_names or tuple(str(i) for i in range(task.num_labels or 0))
        summary["labels"] = {str(names[k]) if k < len(names) else str(k): counts[k] for k in sorted(counts)}
    texts = [ex.text + (" " + ex.text_pair if ex.text_pair else "") + (ex.target or "")
             for ex in task_data.train[:sample]]
    lengths = sorted(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]) if texts else [0]
    summary["tokens"] = {"sampled": len(texts), "median": lengths[len(lengths) // 2], "max": lengths[-1],
                         "truncated_at_max_length": sum(n > max_length for n in lengths)}
    return summary


def render_inspection(report: dict[str, Any]) -> str:
    """Human-readable text for an inspection report."""
    m, layers, d = report["model"], report["layers"], report["data"]
    lines = [f"model   {m['name']} ({m['class']}, {m['model_type']}, {m['parameters'] / 1e6:.1f}M params, "
             f"config {m['config_hash']})", f"        from {m['source']}",
             f"layers  {layers['count']} blocks at {layers['path']}"]
    for b in layers["blocks"]:
        roles = ", ".join(f"{r} {i}->{o}" for r, (i, o) in b["roles"].items())
        lines.append(f"  {b['index']:>3}  {b['params'] / 1e6:6.2f}M  {roles}")
    lines.append(f"data    {d['task']} ({d['kind']}) from {d['source']}: train {d['train']}, dev {d['dev']}")
    if "labels" in d:
        lines.append("        labels " + ", ".join(f"{k}: {v}" for k, v in d["labels"].items()))
    t = d["tokens"]
    lines.append(f"        tokens per example (first {t['sampled']}): median {t['median']}, max {t['max']}, "
                 f"{t['truncated_at_max_length']} longer than --max-length")
    if d["skipped"]:
        lines.append("        skipped rows: " + ", ".join(f"{k}: {v}" for k, v in d["skipped"].items()))
    lines.append(f"        metrics {', '.join(d['metrics'])}")
    return "\n".join(lines)
