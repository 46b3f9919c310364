"""Benchmark results as data (layerwise.bench.store), counted step FLOPs (layerwise.bench.flops), the deep
runner's resume by result file, and the converged tables of docs/BENCHMARKS.md regenerated from the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerwise.bench.store import (cell_name, choose_step, is_finished, load_results, read_result, result_path,
                                   write_result)
from layerwise.runtime.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _record(**over) -> dict:
    r = {"model": "m", "task": "t", "cell": cell_name("lora", 0, 1e-3), "method": "lora", "seed": 0, "lr": 1e-3,
         "stage": "sweep", "config": {"train": {"steps": 4}},
         "evaluations": [{"step": 2, "flops": 1e9, "seconds": 1.0, "validation": {"accuracy": 0.7},
                          "dev": {"accuracy": 0.69}},
                         {"step": 4, "flops": 2e9, "seconds": 2.0, "validation": {"accuracy": 0.8},
                          "dev": {"accuracy": 0.75}}],
         "chosen": {"step": 4, "by": "validation", "flops": 2e9, "seconds": 2.0, "validation": {"accuracy": 0.8},
                    "dev": {"accuracy": 0.75}},
         "main_metric": "accuracy", "higher_is_better": True, "layers": [0, 1], "ranks": {"0": 8, "1": 8},
         "trainable_params": 100, "machine": {"host": "h"}, "commit": None, "date": "2026-12-05",
         "unrecorded": ["commit"]}
    r.update(over)
    return r


def test_a_result_round_trips_and_is_found_by_model_and_task(tmp_path) -> None:
    path = result_path(tmp_path, "m", "t", "lora-s0-lr0.001")
    assert path == tmp_path / "m-t" / "lora-s0-lr0.001.json"
    assert not is_finished(path)
    write_result(path, _record())
    back = read_result(path)
    assert back == {"schema": 1, **_record()}
    assert is_finished(path)
    write_result(result_path(tmp_path, "m", "u", "x"), _record(task="u", cell="x"))
    assert [r["task"] for r in load_results(tmp_path)] == ["t", "u"]
    assert [r["cell"] for r in load_results(tmp_path, task="u")] == ["x"]


def test_a_finished_cell_is_never_overwritten_and_a_bad_file_is_not_finished(tmp_path) -> None:
    path = result_path(tmp_path, "m", "t", "c")
    write_result(path, _record())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already holds a finished cell"):
        write_result(path, _record(seed=1))
    assert path.read_bytes() == before
    path.write_text("{")  # a torn file (what a non-atomic write would leave) is not a finished cell
    assert not is_finished(path)
    with pytest.raises(DataError, match="not JSON"):
        read_result(path)
    with pytest.raises(DataError, match="lacks chosen"):
        write_result(tmp_path / "x.json", {k: v for k, v in _record().items() if k != "chosen"})
    with pytest.raises(DataError, match="unrecorded names"):
        write_result(tmp_path / "y.json", _record(unrecorded=["nonsense"]))
    with pytest.raises(ConfigError, match="names a file"):
        result_path(tmp_path, "m/../x", "t", "c")


def test_a_write_that_fails_midway_leaves_no_result_and_no_temporary_file(tmp_path, monkeypatch) -> None:
    path = result_path(tmp_path, "m", "t", "c")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_result(path, _record())
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_the_chosen_step_is_the_best_validation_score_the_earliest_among_equals() -> None:
    evals = [{"step": 1, "validation": {"a": 0.5}}, {"step": 2, "validation": {"a": 0.9}},
             {"step": 3, "validation": {"a": 0.9}}, {"step": 4}]
    assert choose_step(evals, "a")["step"] == 2
    assert choose_step(evals, "a", higher_is_better=False)["step"] == 1
    assert choose_step([{"step": 1}], "a") is None


def test_the_deep_runner_lists_finished_cells_as_done_and_derives_uniforms_rate(tmp_path) -> None:
    def listing() -> str:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks/deep.py"), "--model", "m", "--task", "t",
                               "--results", str(tmp_path), "--lrs", "1e-3,2e-3", "--stage", "sweep,main",
                               "--methods", "lora,pareto", "--seeds", "0,1", "--list"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = listing()
    assert "sweep lora-s0-lr0.001: to run" in out and "main  pareto-s1-lr?: waits for the sweep" in out
    write_result(result_path(tmp_path, "m", "t", "lora-s0-lr0.001"), _record(cell="lora-s0-lr0.001"))
    best = _record(cell="lora-s0-lr0.002", lr=2e-3)
    best["chosen"] = {**best["chosen"], "validation": {"accuracy": 0.9}}
    write_result(result_path(tmp_path, "m", "t", "lora-s0-lr0.002"), best)
    out = listing()
    assert "sweep lora-s0-lr0.001: done" in out and "sweep lora-s0-lr0.002: done" in out
    # uniform's rate is the sweep's best validation (2e-3); its seed-0 main cell is the sweep's cell, run once
    assert "main  pareto-s1-lr0.002: to run" in out and out.count("lora-s0-lr0.002") == 1
    # compute-matched: a cheaper method's budget spends uniform's mean FLOPs to its chosen step (2e9 here)
    matched = subprocess.run([sys.executable, str(REPO / "benchmarks/deep.py"), "--model", "m", "--task", "t",
                              "--results", str(tmp_path), "--lrs", "1e-3,2e-3", "--stage", "matched", "--methods",
                              "lora,pareto,budget", "--seeds", "0", "--list"], capture_output=True, text=True,
                             timeout=60)
    assert "matched pareto-s0-lr0.002-matched: waits for its main cell" in matched.stdout, matched.stderr
    for method, total in (("pareto", 4e8), ("budget", 9e9)):  # 4 steps each: 1e8 and 2.25e9 FLOPs per step
        write_result(result_path(tmp_path, "m", "t", f"{method}-s0-lr0.002"),
                     _record(method=method, cell=f"{method}-s0-lr0.002", lr=2e-3, stage="main", steps=4,
                             total_flops=total))
    matched = subprocess.run(matched.args, capture_output=True, text=True, timeout=60)
    assert "matched pareto-s0-lr0.002-matched: to run (20 steps)" in matched.stdout, matched.stdout
    assert "budget-s0-lr0.002-matched" not in matched.stdout  # its 4-step budget already spends 2e9
    # the budget is the mean over every seed of uniform LoRA: with seed 1 of uniform unfinished it is not fixed yet
    two_seeds = subprocess.run([*matched.args[:-2], "0,1", "--list"], capture_output=True, text=True, timeout=60)
    assert "matched pareto-s0-lr0.002-matched: waits for its main cell and every seed" in two_seeds.stdout, \
        two_seeds.stdout
    # full fine-tuning has its own rates (stage full), never uniform LoRA's
    full = subprocess.run([*matched.args[:matched.args.index("--stage")], "--stage", "full", "--full-lrs", "1e-5,3e-5",
                           "--list"], capture_output=True, text=True, timeout=60)
    assert "sweep full-s0-lr1e-05: to run" in full.stdout and "sweep full-s0-lr3e-05: to run" in full.stdout, \
        full.stdout + full.stderr
    refused = subprocess.run([*matched.args[:matched.args.index("--methods")], "--methods", "lora,full", "--seeds",
                              "0", "--list"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--stage full" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_the_deep_runner_runs_a_cell_and_scores_dev_at_the_validation_step_only(tmp_path, glue_dir) -> None:
    """One real cell at a sliver's size (MiniLM, 72 MRPC pairs): the result file holds the validation score of
    every evaluation, FLOPs growing with the step, and the dev score of the chosen step alone; a second run
    skips the finished cell."""
    cmd = [sys.executable, str(REPO / "benchmarks/deep.py"), "--model", "minilm", "--task", "mrpc", "--data",
           str(glue_dir / "MRPC"), "--train-subset", "72", "--epochs", "2", "--batch-size", "16", "--max-length",
           "48", "--eval-max-examples", "24", "--card-samples", "16", "--lrs", "2e-3", "--stage", "sweep",
           "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--flop-lengths", "8,16,32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    r = read_result(result_path(tmp_path / "results", "minilm", "mrpc", "lora-s0-lr0.002"))
    evals = r["evaluations"]
    assert len(evals) >= 2 and all(e["validation"] and e["dev"] is None for e in evals)
    assert [e["flops"] for e in evals] == sorted(e["flops"] for e in evals) and evals[0]["flops"] > 0
    assert r["chosen"] == {**r["chosen"], **{k: v for k, v in choose_step(evals, "accuracy").items() if k != "dev"}}
    dev = r["chosen"]["dev"]["accuracy"]
    assert abs(dev * 24 - round(dev * 24)) < 1e-6  # an accuracy over the 24 scored dev pairs
    assert r["notes"].startswith("dev: scored only at the chosen step")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "run  lora" not in again.stdout
    # a freezing cell trains on uniform's batches; each step is counted at the depth that trained it
    stage = cmd.index("--stage")
    frozen = subprocess.run(cmd[:stage] + ["--stage", "main", "--methods", "freeze-card", "--seeds", "0"]
                            + cmd[stage + 2:], capture_output=True, text=True, timeout=600, env=env)
    assert frozen.returncode == 0, frozen.stderr[-3000:]
    f = read_result(result_path(tmp_path / "results", "minilm", "mrpc", "freeze-card-s0-lr0.002"))
    depth = f["freeze"]["depth"]  # [step after which blocks froze, blocks still training]
    uniform = {e["step"]: e["flops"] for e in evals}
    ours = {e["step"]: e["flops"] for e in f["evaluations"]}
    assert all(ours[s] == pytest.approx(uniform[s], rel=1e-9) for s in ours if s <= depth[1][0])
    assert f["total_flops"] < r["total_flops"] and f["steps"] == r["steps"]
    late = sorted(s for s in ours if s > depth[-1][0])  # evaluations after the last freeze: only cheap steps between
    assert len(late) >= 2, depth
    share = (ours[late[-1]] - ours[late[0]]) / (uniform[late[-1]] - uniform[late[0]])
    assert 0 < share < 2 * depth[-1][1] / len(f["layers"])  # about the trainable blocks' share of the model
    # full fine-tuning at its own rate: every weight's gradient, so each step costs more than uniform LoRA's
    full = subprocess.run(cmd[:stage] + ["--stage", "full", "--full-lrs", "1e-4"] + cmd[stage + 2:],
                          capture_output=True, text=True, timeout=600, env=env)
    assert full.returncode == 0, full.stderr[-3000:]
    g = read_result(result_path(tmp_path / "results", "minilm", "mrpc", "full-s0-lr0.0001"))
    assert g["method"] == "full" and g["lr"] == 1e-4 and g["ranks"] is None and g["stage"] == "sweep"
    assert g["trainable_params"] > 100 * r["trainable_params"] and g["steps"] == r["steps"]
    per_step = {"full": g["total_flops"] / g["steps"], "lora": r["total_flops"] / r["steps"]}
    assert 1.2 < per_step["full"] / per_step["lora"] < 3.5, per_step  # weight gradients: about one more matmul


def test_step_flops_fit_predicts_an_unseen_length_and_the_cache_removes_the_prefix() -> None:
    import torch
    import transformers

    from layerwise.bench.flops import count_flops, count_step, cumulative_flops, fit_cost

    assert fit_cost([1, 2, 3, 4], [3 + 2 * t + 5 * t * t for t in (1, 2, 3, 4)]) == pytest.approx((3, 2, 5))
    with pytest.raises(ValueError, match="three distinct"):
        fit_cost([4, 4, 8], [1, 1, 2])
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                      pad_token_id=0, num_labels=2)
    model = transformers.LlamaForSequenceClassification(config)
    for p in model.model.layers[0].parameters():  # block 0 frozen: a prefix
        p.requires_grad_(False)

    def batch(b: int, t: int) -> dict:
        ids = torch.randint(3, 64, (b, t))
        return {"input_ids": ids, "labels": torch.zeros(b, dtype=torch.long)}

    cost = count_step(model, batch, 2, [8, 16, 32], prefix_modules=["LlamaForSequenceClassification.model.layers.0"])
    assert cost.b > 0  # attention's T^2 (torch's counter alone counts the CPU flash kernels as zero)
    measured, per_module = count_flops(lambda: model(**batch(2, 24)).loss.backward())
    assert cost.step(24) == pytest.approx(measured, rel=1e-9)  # exact: FLOPs are a polynomial in T
    assert cost.step(24, batch=4) == pytest.approx(2 * measured, rel=1e-9)
    prefix = per_module["LlamaForSequenceClassification.model.layers.0"]
    assert 0 < prefix < measured / 3
    assert cost.step(24, cached=True) == pytest.approx(measured - prefix, rel=1e-9)
    assert cumulative_flops(cost, [(2, 24), (4, 24)]) == pytest.approx([measured, 3 * measured], rel=1e-9)


def test_the_converged_tables_in_benchmarks_md_are_what_the_result_files_give(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert tables.main(["--check"]) == 0
    doc = tmp_path / "BENCHMARKS.md"
    text = (REPO / "docs/BENCHMARKS.md").read_text()
    assert "| budget | 0.002 | 3,4,5 | 0,1,2 |" in text
    doc.write_text(text.replace("| budget | 0.002 | 3,4,5 | 0,1,2 |", "| budget | 0.002 | 3,4,5 | 0,1 |"))
    assert tables.main(["--check", "--doc", str(doc)]) == 1
    # a changed result changes the text the check expects
    results = tmp_path / "results"
    for r in load_results(REPO / "benchmarks/results", model="minilm", task="mrpc", folder="minilm-mrpc"):
        if r["cell"] == "budget-seeds012-lr0.002":
            r["summary"]["dev"]["accuracy"]["mean"] = 0.5
        write_result(result_path(results, r["model"], r["task"], r["cell"]), {k: v for k, v in r.items()
                                                                               if k != "schema"})
    doc.write_text(text)
    assert tables.main(["--check", "--doc", str(doc), "--results", str(results)]) == 1
    assert json.loads((REPO / "benchmarks/results/minilm-mrpc/budget-seeds012-lr0.002.json").read_text())[
        "summary"]["dev"]["accuracy"]["mean"] == 0.7565
    # the README's summary is generated too: its budget row follows the changed file
    readme = (REPO / "README.md").read_text()
    assert "| budget | 3,4,5 | 0.7565 ± 0.0057 |" in readme
    changed = tables.regenerate_readme(readme, results)
    assert "| budget | 3,4,5 | 0.5000 ± 0.0057 |" in changed and "| budget | 3,4,5 | 0.7565" not in changed
    (tmp_path / "README.md").write_text(changed)
    assert tables.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1


def test_attention_on_the_cpu_flash_kernel_is_counted() -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    from layerwise.bench.flops import count_flops

    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    total, _ = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
    assert total == sdpa_flop_count(q.shape, k.shape, v.shape) + sdpa_backward_flop_count(q.shape, q.shape, k.shape,
                                                                                           v.shape) > 0


def test_the_freezing_table_says_which_target_each_method_met(tmp_path) -> None:
    """A combined freeze_lockstep summary (made by its own summarize) renders between its markers: per-seed rows,
    means, the variant chosen on validation, and each target met or missed by the stated rule."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import freeze_lockstep
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def run(dev: float, val: float, secs: float, froze: dict | None = None) -> dict:
        freeze = None if froze is None else {"freeze_step": froze, "kendall_tau": 1.0}
        return {"dev_at_validation_step": dev, "validation": val, "best_step": 100, "final_dev": dev,
                "train_seconds": secs, "steps": 300, "stopped_early": True, "freeze": freeze}

    runs = {s: {"uniform": run(0.80 + d, 0.81, 100.0),
                "freeze-auto": run(0.797 + d, 0.80, 50.0, {"0": 20, "1": 40, "2": None}),
                "freeze-auto+every=13": run(0.78 + d, 0.79, 40.0, {"0": 10, "1": None, "2": None}),
                "freeze-card": run(0.80 + d, 0.81, 70.0, {"0": 90, "1": None, "2": None})}
            for s, d in (("0", 0.0), ("1", 0.01))}
    summary = freeze_lockstep.summarize(runs, list(runs["0"]))
    summary["majority"] = {"predictor": "always class 1", "metrics": {"accuracy": 0.6838}}
    assert summary["chosen"] == {"uniform": "uniform", "freeze-auto": "freeze-auto", "freeze-card": "freeze-card"}
    folder = tmp_path / "freeze"
    folder.mkdir()
    (folder / "mrpc-full.json").write_text(json.dumps(summary))
    doc = "before\n<!-- freeze mrpc-full: begin -->\nold\n<!-- freeze mrpc-full: end -->\nafter\n"
    text, missing = tables.regenerate_freeze(doc, folder)
    assert missing == [] and "old" not in text and text.startswith("before") and text.endswith("after\n")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| freeze")}
    assert "| -0.30 pts | 0.500 (0.50, 0.50) | 1.00 | yes | met |" in rows["freeze-auto"]
    assert rows["freeze-auto+every=13"].endswith("| missed: accuracy |")
    assert rows["freeze-card"].endswith("| 0.700 (0.70, 0.70) | 1.00 | yes | missed: time |")
    assert "| 0 | freeze-auto | 0@20, 1@40 | 300 | 100 | 0.8000 | 0.7970 | 50 | 0.50 |" in text
    assert "Majority-class baseline on dev: accuracy 0.6838" in text


def test_the_default_policy_follows_the_stated_rule() -> None:
    """The cheapest policy within 1 point of uniform LoRA on every task wins; with none, the best score per unit of
    cost; a top-k's k is matched across depths as a share of them; a policy missing a task does not compete."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def cell(method: str, dev: float, flops: float, n_layers: int, seed: int = 0) -> dict:
        return _record(method=method, cell=cell_name(method, seed, 1e-3), seed=seed, stage="main",
                       layers=list(range(n_layers)), chosen={"step": 4, "flops": flops, "seconds": 1.0,
                                                             "validation": {"accuracy": dev},
                                                             "dev": {"accuracy": dev}})

    def tasks(a_dev: float) -> dict[str, list[dict]]:
        return {"m-a": [cell("lora", 0.80, 10.0, 6), cell("budget", a_dev, 6.0, 6), cell("pareto", 0.795, 3.0, 6),
                        cell("actnorm-top3", 0.70, 9.0, 6), cell("random3", 0.80, 1.0, 6),
                        cell("actnorm-threshold", a_dev + 0.005, 8.0, 6)],
                "m-b": [cell("lora", 0.90, 10.0, 30), cell("budget", 0.895, 5.0, 30), cell("pareto", 0.80, 2.0, 30),
                        cell("actnorm-top15", 0.905, 9.0, 30), cell("cka", 0.90, 1.0, 30),
                        cell("actnorm-threshold", 0.90, 8.0, 30)]}

    assert tables.policy_of("actnorm-top15", 30) == tables.policy_of("actnorm-top3", 6) == "actnorm-top(L/2)"
    assert tables.policy_of("snr-top8", 30) == "snr-top(L/4)" and tables.policy_of("random8", 30) is None
    # budget is within 1 point on both tasks (-0.5, -0.5) at 55% of the cost, actnorm-threshold (0, 0) at 80%;
    # pareto is cheaper but 10 points off
    text = tables.default_policy(tasks(a_dev=0.795))
    assert "**By the rule: `budget`**" in text and "cka (m-b)" in text
    assert "| pareto | -0.5 pts (pareto, n=1), 30% FLOPs | -10.0 pts (pareto, n=1), 20% FLOPs | no |" in text
    # budget 3 points and actnorm-threshold 2.5 off on task a: nothing qualifies; pareto has the best score per cost
    text = tables.default_policy(tasks(a_dev=0.77))
    assert "**By the rule: `pareto`**" in text and "no policy is within 1 point" in text
    # a compute-matched run gets its own table, against uniform LoRA's dev score and FLOPs
    records = tasks(a_dev=0.795)["m-a"]
    longer = {**records[2], "stage": "matched", "cell": "pareto-s0-lr0.001-matched", "config": {"train": {"steps": 12}},
              "chosen": {**records[2]["chosen"], "flops": 8.0, "dev": {"accuracy": 0.81}}}
    text = tables.render("m-a", records + [longer])
    assert "| pareto | 0 | 12 | 4 | 0.7950 (n=1) | 0.8100 (n=1) | +1.0 pts | 80% |" in text


def test_a_freezing_cells_log_must_agree_with_its_recorded_freeze_steps() -> None:
    """deep.py counts each step at the depth the training log's freeze lines give; metrics.json's freeze steps are
    the authoritative record, so a log that lost a line (an interrupt during a cache fill) is refused."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import deep
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    freeze = {"freeze_step": {"0": 40, "1": 40, "2": 90, "3": None}}
    rows = [{"step": 40, "freeze": {"frozen": 2}}, {"step": 90, "freeze": {"frozen": 3}}]
    deep.check_freeze_rows(freeze, rows)  # agrees: blocks 0-1 froze after step 40, block 2 after step 90
    deep.check_freeze_rows({"freeze_step": {"0": None, "1": None}}, [])  # nothing froze, no lines
    with pytest.raises(SystemExit, match="disagree"):
        deep.check_freeze_rows(freeze, rows[:1])  # the line of step 90 was lost
    with pytest.raises(SystemExit, match="disagree"):
        deep.check_freeze_rows(freeze, [{"step": 40, "freeze": {"frozen": 1}}, rows[1]])


def test_the_stability_ablation_pairs_each_metric_with_its_selection_and_correlates(tmp_path) -> None:
    """Each (task, metric) with a seed-stability study and a converged selection ranking by that metric is one
    pair; Spearman's rho is scipy's over those pairs, also without the data-free snr."""
    from scipy.stats import spearmanr

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def cell(method: str, dev: float, n_layers: int = 30) -> dict:
        return _record(method=method, cell=cell_name(method, 0, 1e-3), stage="main", layers=list(range(n_layers)),
                       chosen={"step": 4, "flops": 1.0, "seconds": 1.0, "validation": {"accuracy": dev},
                               "dev": {"accuracy": dev}})

    taus = {"actnorm": 0.9, "cka": 0.5, "resnorm": 0.7, "snr": 1.0, "gradnorm": 0.2}  # gradnorm: no selection
    (tmp_path / "stability").mkdir()
    (tmp_path / "stability" / "m.json").write_text(json.dumps({"seeds": [0, 1, 2], "tasks": {
        "a": {"metrics": {k: {"kendall_tau_mean": v, "kendall_tau_std": 0.01} for k, v in taus.items()}},
        "b": {"metrics": {"actnorm": {"kendall_tau_mean": 0.8, "kendall_tau_std": 0.0}}}}}))
    tasks = {"m-a": [cell("lora", 0.80), cell("actnorm-top15", 0.70), cell("cka", 0.79), cell("budget", 0.75),
                     cell("snr-top15", 0.78), cell("random15", 0.5)],
             "m-b": [cell("lora", 0.90, 6), cell("actnorm-top3", 0.85, 6)]}
    text = tables.stability_vs_score(tmp_path, tasks)
    assert "| m-a | actnorm | 0.900 ± 0.010 | 3 | actnorm-top15 | -10.0 pts | 1 |" in text
    assert "| m-b | actnorm | 0.800 ± 0.000 | 3 | actnorm-top3 | -5.0 pts | 1 |" in text
    assert "gradnorm" not in text and "random15" not in text
    tau, diff = [0.9, 0.5, 0.7, 1.0, 0.8], [-10.0, -1.0, -5.0, -2.0, -5.0]
    rho = spearmanr(tau, diff).statistic
    assert f"all pairs: {rho:+.2f} (n=5," in text
    assert f"without snr (data-free: stable by construction): {spearmanr(tau[:3] + tau[4:], diff[:3] + diff[4:]).statistic:+.2f} (n=4," in text


def test_the_default_policy_rule_reads_a_loss_the_right_way_and_refuses_two_results_per_policy() -> None:
    """For a metric where lower is better, a lower score is a gain; exactly -1.0 points is within 1 point; two
    methods standing for one policy on a task are refused rather than one silently winning."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def cell(method: str, dev: float, flops: float, higher: bool = True) -> dict:
        return _record(method=method, cell=cell_name(method, 0, 1e-3), stage="main", layers=list(range(6)),
                       main_metric="loss", higher_is_better=higher,
                       chosen={"step": 4, "flops": flops, "seconds": 1.0, "validation": {"loss": dev},
                               "dev": {"loss": dev}})

    text = tables.default_policy({"m-a": [cell("lora", 0.50, 10.0, False), cell("budget", 0.49, 5.0, False),
                                          cell("cka", 0.52, 4.0, False)]})
    assert "| budget | +1.0 pts (budget, n=1), 50% FLOPs | yes |" in text
    assert "| cka | -2.0 pts (cka, n=1), 40% FLOPs | no |" in text and "**By the rule: `budget`**" in text
    text = tables.default_policy({"m-a": [cell("lora", 0.50, 10.0), cell("budget", 0.49, 5.0),
                                          cell("cka", 0.52, 4.0)]})
    assert "| budget | -1.0 pts (budget, n=1), 50% FLOPs | yes |" in text  # exactly one point: within
    assert "**By the rule: `cka`**" in text
    with pytest.raises(SystemExit, match="both stand for policy actnorm-top"):
        tables.default_policy({"m-a": [cell("lora", 0.5, 10.0), cell("actnorm-top3", 0.5, 5.0),
                                       cell("actnorm-top4", 0.5, 5.0)]})


def test_full_fine_tuning_enters_the_main_table_at_the_rate_its_own_sweep_chose() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def full(lr: float, val: float) -> dict:
        r = _record(method="full", cell=cell_name("full", 0, lr), lr=lr, layers=None, ranks=None)
        r["chosen"] = {**r["chosen"], "validation": {"accuracy": val}}
        return r

    records = [_record(), full(1e-5, 0.70), full(3e-5, 0.85), full(1e-4, 0.85)]
    groups = tables._main_groups(records, 1e-3)
    assert [r["lr"] for r in groups["full"]] == [3e-5]  # the best validation; of two equal, the lower rate
    assert [r["lr"] for r in groups["lora"]] == [1e-3]  # uniform's seed-0 sweep cell stands for its main seed 0
    text = tables.render("m-t", records)
    assert "| full | **3e-05** | 0.8500 |" in text  # bold in the sweep table
    assert "| full | 3e-05 | all (full) | 0 | 0.8500 (n=1) |" in text  # and its row among the methods


def test_the_figure_draws_at_every_flop_count_the_best_score_the_compute_matched_table_reads(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import numpy as np

    records = load_results(REPO / "benchmarks/results", model="smollm2-135m", task="cola",
                           folder="smollm2-135m-cola")
    runs = [r for r in records if r.get("stage") == "main" and r["evaluations"]][:6]
    assert runs
    for r in runs:
        x = [e["flops"] for e in r["evaluations"]]
        grid = np.unique(np.concatenate([x, np.linspace(0.5 * x[0], 1.5 * x[-1], 17)]))
        curve = tables.best_so_far(r, grid)
        for g, c in zip(grid, curve):
            want = tables._best_within(r, float(g))
            assert (want is None and np.isnan(c)) or c == want, (r["cell"], g, c, want)
    # a loss (lower is better) keeps its minimum
    loss = _record(main_metric="loss", higher_is_better=False,
                   evaluations=[{"step": s, "flops": f, "validation": {"loss": v}}
                                for s, f, v in ((1, 1.0, 0.9), (2, 2.0, 0.5), (3, 3.0, 0.7))])
    assert tables.best_so_far(loss, [0.5, 1.0, 2.5, 3.0, 9.0])[1:].tolist() == [0.9, 0.5, 0.5, 0.5]
    assert tables.figure("smollm2-135m-cola", records, tmp_path / "f.png") and (tmp_path / "f.png").stat().st_size
