"""The README and docs/*.md: every fenced shell command and Python snippet is run (here, at tiny sizes, or by the
test named in COVERED_ELSEWHERE) or marked `<!-- not run: REASON -->` on the line before it; every `layerwise`
command in them parses with the real parser; docs/CLI.md is what scripts/cli_doc.py generates; the README
stays a front door."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ORDER = ["README.md", "CLI.md", "CARD.md", "TRAINING.md", "EXPORT.md", "LOADING.md"]
"""Files run in this order, in one working folder: a later snippet may use what an earlier one wrote
(docs/LOADING.md loads the README's `runs/top3`)."""

FENCE = re.compile(r"^( *)```([\w-]*)[ \t]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$")
RUNNABLE = {"bash", "sh", "shell", "python"}
INERT = {"text", "yaml", "json", "console-output"}
"""Block languages that hold no command (diagrams, file contents)."""

TINY = {"card": ["--samples", "16", "--batch-size", "16"],
        "train": ["--samples", "16", "--steps", "2", "--eval-max-examples", "16"],
        "run": ["--samples", "16", "--steps", "2", "--eval-max-examples", "16"]}
"""Flags appended to a documented command when it runs here (the last value of a flag wins): the same
command, at a size that takes seconds."""

COVERED_ELSEWHERE = {("README.md", "One call on your own model"): ("test_suggest.py", "readme_example")}
"""Blocks another test runs as written: (file, the heading above the block) -> (test file, the function of that
test that extracts the block; it must return this block's text)."""


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    body: str
    heading: str
    not_run: str | None

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.lang or 'no language'})"


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        marker = NOT_RUN.search(before[-1]) if before else None
        headings = [line for line in before if line.startswith("#")]
        out.append(Block(path.name, text.count("\n", 0, m.start()) + 1, m.group(2),
                         textwrap.dedent(m.group(3)), headings[-1].lstrip("# ") if headings else "",
                         marker.group(1) if marker else None))
    return out


ALL = [b for path in DOCS for b in blocks(path)]


def commands(body: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def layerwise_argv(command: str) -> list[str] | None:
    """The arguments after `layerwise` (or `-m layerwise`), or None for another program."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "layerwise" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1:]
    return None


def covered_elsewhere(block: Block) -> str | None:
    """The test that runs ``block`` as written, checked by calling its extractor."""
    key = next((k for k in COVERED_ELSEWHERE if k[0] == block.file and block.heading.startswith(k[1])), None)
    if key is None:
        return None
    test_file, extractor = COVERED_ELSEWHERE[key]
    spec = importlib.util.spec_from_file_location(f"_docs_{test_file[:-3]}", REPO / "tests" / test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert getattr(module, extractor)() == block.body, f"{block}: {test_file}.{extractor} no longer extracts it"
    return test_file


def test_every_block_has_a_language_and_every_command_is_run_or_marked() -> None:
    problems = []
    for b in ALL:
        if b.lang not in RUNNABLE | INERT:
            problems.append(f"{b}: give the block a language ({', '.join(sorted(RUNNABLE | INERT))})")
        elif b.not_run is not None and not b.not_run:
            problems.append(f"{b}: `not run:` needs the reason")
        elif b.lang in ("bash", "sh", "shell") and b.not_run is None:
            others = [c for c in commands(b.body) if layerwise_argv(c) is None]
            if others:
                problems.append(f"{b}: only `layerwise` commands run here; mark it not run, with why: {others}")
    assert not problems, "\n".join(problems)
    for b in ALL:
        if b.lang == "python" and b.not_run is None:
            covered_elsewhere(b)  # raises when the other test no longer runs this text


def test_every_documented_layerwise_command_parses() -> None:
    """Each `layerwise` command in the docs, run or not, has flags the parser knows (placeholders aside)."""
    from layerwise.cli import build_parser

    parser = build_parser()
    checked = 0
    for b in ALL:
        if b.lang not in ("bash", "sh", "shell"):
            continue
        for command in commands(b.body):
            argv = layerwise_argv(command)
            if argv is None or "..." in command or "$" in command:
                continue
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{b}: `{command}` does not parse")
            checked += 1
    assert checked >= 10


def test_cli_md_is_generated_from_the_parser() -> None:
    spec = importlib.util.spec_from_file_location("_cli_doc", REPO / "scripts" / "cli_doc.py")
    cli_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_doc)
    current = cli_doc.DOC.read_text()
    assert current == cli_doc.render(current), "docs/CLI.md is stale: run python scripts/cli_doc.py"
    from layerwise.cli import COMMANDS

    for name in COMMANDS:
        assert f"\n## layerwise {name}\n" in current


def test_the_readme_is_a_front_door() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    begin, end = text.index("<!-- results:begin -->"), text.index("<!-- results:end -->")
    assert begin < end and "| lora |" in text[begin:end]
    for name in ("CLI", "CARD", "TRAINING", "EXPORT", "API", "BENCHMARKS", "RELIABILITY", "DISTRIBUTED",
                 "ARCHITECTURE"):
        assert f"(docs/{name}.md" in text
    assert "make demo" in text and "make test" in text


def test_relative_links_point_at_files_that_exist() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: link to {target} is broken"


def test_the_docs_run_as_written(glue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unmarked block, in ORDER, in one working folder that has `../shared/data` and `examples/`."""
    from layerwise.cli import main

    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(glue_dir.parent, target_is_directory=True)
    (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    monkeypatch.chdir(work)
    ran: set[str] = set()
    order = {name: i for i, name in enumerate(ORDER)}
    for b in sorted((b for b in ALL if b.lang in RUNNABLE and b.not_run is None),
                    key=lambda b: (order.get(b.file, len(ORDER)), b.file, b.line)):
        if b.lang == "python":
            if covered_elsewhere(b) is None:
                exec(compile(b.body, str(b), "exec"), {"__name__": "__docs__"})
            continue
        for command in commands(b.body):
            if command in ran:  # the same command, already run above
                continue
            argv = layerwise_argv(command)
            assert main([*argv, *TINY.get(argv[0], [])]) == 0, f"{b}: `{command}` failed"
            ran.add(command)
