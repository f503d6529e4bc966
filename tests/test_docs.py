"""README.md and docs/*.md as specifications: the README stays short, every link and anchor resolves, every command
shown parses (and the ones shown with their output run, against the committed studies), every space named loads,
the layout page names every module, and the figures exist and stay small."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150
MAX_FIGURE_BYTES = 250_000
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
COMMITTED_STUDIES = ("fashion_table", "fashion_table_600")     # what git keeps of each: space.yaml, study.db.gz
RUNNABLE = {"gunzip"}                                          # besides dsearch, what a `$ ` line may run


class Block(NamedTuple):
    lang: str
    line: int             # 1-based line of the first line inside the fence
    lines: list[str]


class Command(NamedTuple):
    where: str            # file:line
    text: str             # the command, continuation lines joined, comment kept
    console: bool         # a `$ ` line of a console block, to be run
    output: list[str]     # console blocks: the lines shown after it


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    blocks, current = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and current is None:
            current = Block(fence.group(1).lower(), n + 1, [])
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"{rel(path)}: a code block is not closed"
    return blocks


def prose(path: Path) -> list[tuple[int, str]]:
    """The lines outside code blocks, with their numbers."""
    out, inside = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(r"^\s*```", line):
            inside = not inside
            continue
        if not inside:
            out.append((n, line))
    return out


def commands(path: Path) -> Iterator[Command]:
    """Every command of the shell blocks: bash/sh lines (continued with a trailing backslash) and console `$ ` lines
    with the output shown under them."""
    for block in code_blocks(path):
        if block.lang not in SHELL_BLOCKS:
            continue
        console = block.lang == "console"
        i = 0
        while i < len(block.lines):
            line, start = block.lines[i], block.line + i
            i += 1
            if console:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            while line.rstrip().endswith("\\") and i < len(block.lines):
                line = line.rstrip()[:-1] + " " + block.lines[i].strip()
                i += 1
            output = []
            if console:
                while i < len(block.lines) and not block.lines[i].startswith("$ "):
                    output.append(block.lines[i])
                    i += 1
            yield Command(f"{rel(path)}:{start}", line.strip(), console, output)


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in commands(path)]


def words(command: Command) -> list[str]:
    return shlex.split(command.text, comments=True)


# ------------------------------------------------------------------------------------------------ the README

def test_readme_is_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_two_set_up_commands():
    """After the title and at most 3 lines of description: `make quickstart`, then `make test` (CI runs it)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ")
    fence = next(n for n, line in enumerate(lines) if line.startswith("```"))
    assert len([line for line in lines[1:fence] if line.strip()]) <= 3
    first = code_blocks(README)[0]
    assert first.lang == "bash"
    assert [line.split("#")[0].strip() for line in first.lines] == ["make quickstart", "make test"]


# ------------------------------------------------------------------------------------------------ links

def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but `-` and `_` removed, spaces → -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> Iterator[tuple[int, str]]:
    for n, line in prose(path):
        for target in LINK.findall(re.sub(r"`[^`]*`", "code", line)):
            yield n, target


def test_every_link_and_anchor_resolves():
    problems = []
    for path in DOCS:
        for n, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel(path)}:{n}: {target}"
            if ROOT not in (dest, *dest.parents):
                problems.append(f"{where}: outside the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                problems.append(f"{where}: no heading #{anchor} in {rel(dest)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_figures_exist_are_shown_and_stay_small():
    shown = {(path.parent / t).resolve() for path in DOCS for _, t in links(path) if t.endswith(".png")}
    pngs = sorted((ROOT / "docs" / "img").glob("*.png"))
    assert pngs, "no figures in docs/img"
    problems = [f"{rel(p)}: {p.stat().st_size:,} bytes (> {MAX_FIGURE_BYTES:,})" for p in pngs
                if p.stat().st_size > MAX_FIGURE_BYTES]
    problems += [f"{rel(p)}: shown on no page" for p in pngs if p.resolve() not in shown]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ commands

def _click():
    """click's Context and exceptions as typer uses them (typer ≥ 0.20 vendors click, as dsearch/cli/app.py says)."""
    try:
        from typer._click import exceptions
        from typer._click.core import Context
    except ImportError:  # pragma: no cover
        from click import Context, exceptions
    return Context, exceptions


def parse_dsearch(args: list[str]) -> str | None:
    """None if `dsearch ARGS` parses and validates (nothing runs), else the error."""
    import typer

    from dsearch.cli import app

    Context, exc = _click()
    root = typer.main.get_command(app)
    ctx = Context(root, info_name="dsearch")
    while args and args[0] == "--verbose":
        args = args[1:]
    if not args:
        return "no command"
    sub = root.get_command(ctx, args[0])
    if sub is None:
        return f"no such command {args[0]!r}"
    try:
        with contextlib.redirect_stdout(io.StringIO()):      # --help prints
            sub.make_context(args[0], list(args[1:]), parent=ctx)
    except typer.Exit:                                       # --help
        return None
    except exc.ClickException as e:
        return e.format_message()
    except Exception as e:                                   # noqa: BLE001 (any failure is a finding)
        return f"{type(e).__name__}: {e}"
    return None


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {t for line in text.splitlines() if (m := re.match(r"^([\w.-][\w. -]*):(?!=)", line))
            for t in m.group(1).split()}


def command_problem(command: Command) -> str | None:
    """What is wrong with a documented command, if anything we can check without running it."""
    try:
        argv = words(command)
    except ValueError as e:
        return f"shlex: {e}"
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):     # VAR=value before the command
        argv = argv[1:]
    if not argv:
        return None
    program = Path(argv[0]).name
    if program == "dsearch":
        return parse_dsearch(argv[1:])
    if program == "make":
        missing = [t for t in argv[1:] if not t.startswith("-") and "=" not in t and t not in makefile_targets()]
        return f"no Makefile target {', '.join(missing)}" if missing else None
    if program.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        return None if (ROOT / argv[1]).is_file() else f"no script {argv[1]}"
    return None


def test_every_command_in_the_docs_parses():
    """`dsearch ...` lines parse and validate with click (make_context: nothing runs); `make T` names a Makefile
    target; `python SCRIPT` names a file."""
    found = all_commands()
    assert sum(words(c)[:1] == ["dsearch"] for c in found) >= 40, "the docs' commands were not found"
    problems = [f"{c.where}: {c.text}\n    {problem}" for c in found if (problem := command_problem(c))]
    assert not problems, f"{len(problems)} documented commands don't parse:\n" + "\n".join(problems)


def test_every_space_the_docs_name_loads_and_validates():
    """spaces/*.yaml named anywhere in the docs, and every YAML block that is a whole space."""
    from dsearch.search.io import load_space, parse_space

    problems = []
    named = {m for path in DOCS for m in re.findall(r"spaces/[\w.-]+\.yaml", path.read_text(encoding="utf-8"))}
    assert "spaces/quickstart.yaml" in named
    for name in sorted(named):
        try:
            load_space(ROOT / name)
        except Exception as e:                               # noqa: BLE001
            problems.append(f"{name}: {e}")
    for path in DOCS:
        for block in code_blocks(path):
            text = "\n".join(block.lines)
            if block.lang == "yaml" and re.search(r"^params:", text, re.M):
                try:
                    parse_space(text, source=f"{rel(path)}:{block.line}")
                except Exception as e:                       # noqa: BLE001
                    problems.append(str(e))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ run for real

def shown_lines_missing(shown: list[str], output: str) -> list[str]:
    """The shown lines not found, in order, in the output (whitespace runs compared as one space; `...` in a
    line stands for any text, a line of `...` for any lines)."""
    got = [" ".join(line.split()) for line in output.splitlines()]
    missing, at = [], 0
    for line in shown:
        want = " ".join(line.split())
        if not want or want in ("...", "…"):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        hit = next((i for i in range(at, len(got)) if pattern.search(got[i])), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    return missing


@pytest.fixture(scope="module")
def committed_checkout(tmp_path_factory) -> Path:
    """What a fresh clone holds of studies/ (each committed table's space.yaml and study.db.gz) and spaces/."""
    root = tmp_path_factory.mktemp("checkout")
    for name in COMMITTED_STUDIES:
        (root / "studies" / name).mkdir(parents=True)
        for f in ("space.yaml", "study.db.gz"):
            shutil.copy(ROOT / "studies" / name / f, root / "studies" / name / f)
    shutil.copytree(ROOT / "spaces", root / "spaces")
    return root


def run_shown(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run a `$ ` line in cwd: dsearch in this process (no interpreter start-up), `gunzip` as a process."""
    if argv[0] == "dsearch":
        from dsearch.cli import main

        out, err = io.StringIO(), io.StringIO()
        before = os.getcwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv[1:])
        finally:
            os.chdir(before)
        return code, out.getvalue() + err.getvalue()
    assert argv[0] in RUNNABLE, f"the docs test runs dsearch and {', '.join(sorted(RUNNABLE))} only, not {argv[0]}"
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_the_commands_shown_with_their_output_run_on_the_committed_studies(committed_checkout):
    """Every `$ ` line of a console block runs, in order, in a copy of what git holds of studies/ and spaces/,
    exits 0 and prints the lines shown under it."""
    shown = [c for c in all_commands() if c.console]
    assert any(words(c)[:2] == ["dsearch", "pareto"] for c in shown)
    problems = []
    for c in shown:
        code, output = run_shown(words(c), committed_checkout)
        missing = shown_lines_missing(c.output, output)
        if code != 0 or missing:
            tail = "\n      ".join(output.splitlines()[-5:])
            problems.append(f"{c.where}: {c.text}: exit {code}"
                            + "".join(f"\n    not printed: {m}" for m in missing) + f"\n    output ends:\n      {tail}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ layout

def test_the_layout_page_names_every_module_and_only_modules_that_exist():
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    named = {t.removeprefix("dsearch/") for t in re.findall(r"`([\w/]+\.py)`", text)
             if not t.startswith(("tests/", "bench/", "docs/"))}
    on_disk = {str(p.relative_to(ROOT / "dsearch")) for p in (ROOT / "dsearch").rglob("*.py")}
    missing = sorted(m for m in on_disk - named if not m.endswith("__init__.py"))
    gone = sorted(named - on_disk)
    assert not missing and not gone, f"docs/layout.md: not named: {missing}; named but not there: {gone}"


def test_the_readme_layout_names_every_subpackage_and_only_paths_that_exist():
    text = README.read_text(encoding="utf-8").split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`([\w./]+(?:\.py|/))`", text)
    gone = [p for p in paths if not ((ROOT / p).exists() or (ROOT / "dsearch" / p).exists())]
    packages = {f"dsearch/{p.parent.name}/" for p in (ROOT / "dsearch").glob("*/__init__.py")}
    missing = sorted(packages - set(paths))
    assert not gone and not missing, f"README.md layout: not there: {gone}; subpackages not named: {missing}"
