"""The documentation: every command in the README and the guides is a real command line, every path a page
names exists, no page holds a commit hash, the library cites no results file or issue; the generated
references (CLI, passes, API) are complete, every benchmark results file has a page, every how-to links
an example that exists. `make docs` (run by `make test`) builds the site with --strict."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from prunefx.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages a user copies commands from: the README, getting started, the guides and feature pages.
COMMAND_PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "howto").glob("*.md")),
                 DOCS / "reference" / "recipes.md"]


def _script(name: str):
    """A module of scripts/ (not a package), loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def shell_commands(markdown: str) -> list[list[str]]:
    """The `prunefx ...` command lines in the page's shell blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words[:1] == ["sudo"]:
                words = words[1:]
            if words[:1] == ["prunefx"]:
                commands.append(words[1:])
    return commands


def test_shell_commands_are_found_with_continuations_and_comments():
    page = "```sh\nprunefx prune m --macs 0.5 \\\n    -o out  # a comment\nsudo prunefx bench a.onnx\nls\n```\n"
    assert shell_commands(page) == [["prune", "m", "--macs", "0.5", "-o", "out"], ["bench", "a.onnx"]]


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_page_parses(page):
    for words in shell_commands(page.read_text()):
        try:
            build_parser().parse_args(words)
        except SystemExit as exit_:
            pytest.fail(f"{page.name}: `prunefx {shlex.join(words)}` does not parse (exit {exit_.code})")


def test_the_readme_and_the_tour_show_the_main_commands():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    shown = {words[0] for words in shell_commands(readme.read_text())}
    assert {"inspect", "prune", "bench", "quantize", "check"} <= shown


def _subcommands() -> dict:
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_cli_reference_has_every_command_and_option():
    import argparse

    text = _script("docs_reference").cli_reference()
    for name, sub in _subcommands().items():
        assert f"## prunefx {name}\n" in text
        section = text.split(f"## prunefx {name}\n", 1)[1].split("\n## prunefx ", 1)[0]
        for action in sub._actions:
            for option in [] if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert option in section, (name, option)


def test_the_pass_reference_has_every_pass_and_config_field():
    from prunefx.passes import PASSES

    text = _script("docs_reference").pass_reference()
    for name, function in PASSES.items():
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for field in dataclasses.fields(function.config_class):
            assert f"| `{field.name}` |" in section, (name, field.name)


@pytest.mark.parametrize("module_name", ["prunefx", "prunefx.passes", "prunefx.runtime"])
def test_the_api_reference_covers_every_public_name(module_name):
    reference = _script("docs_reference")
    text = reference.api_reference(module_name)
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert f"## {module_name}.{name}\n" in text, name
    pages = "\n".join(path.read_text() for path in (DOCS / "reference" / "api").glob("*.md"))
    assert f"<!-- prunefx:api {module_name} -->" in pages


def test_api_directives_point_where_the_object_is_defined():
    reference = _script("docs_reference")
    assert reference.defining_path("prunefx", "Pipeline") == "prunefx.passes.core.pipeline.Pipeline"
    # data a package imports lazily: where it is defined (prunefx.passes imports its names on first use)
    assert reference.defining_path("prunefx.passes", "PASSES") == "prunefx.passes.core.registry.PASSES"


def test_every_results_file_is_on_the_site():
    results = _script("docs_results")
    claimed = results.claimed_names(DOCS / "benchmarks")
    unclaimed = results.unclaimed_markdown(DOCS / "benchmarks")
    for name in results.result_names():
        assert name in claimed or f"## {name}\n" in unclaimed, name
    assert "<!-- prunefx:unclaimed -->" in (DOCS / "benchmarks" / "more-results.md").read_text()


def test_results_tables_are_made_from_the_json(tmp_path, monkeypatch):
    results = _script("docs_results")
    data = {"command": "python benchmarks/x.py --fast", "runs": [
        {"model": "resnet20", "speedup": 1.23456, "met": True},
        {"model": "vit", "speedup": 2.5, "met": False}]}
    (tmp_path / "x.json").write_text(json.dumps(data))
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    text = results.results_markdown("x")
    assert "python benchmarks/x.py --fast" in text
    assert "| model | speedup | met |" in text
    assert "| resnet20 | 1.235 | yes |" in text and "| vit | 2.5 | no |" in text


@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_results_marker_without_its_file_fails_the_build_in_one_line(content, tmp_path, monkeypatch):
    """MkDocs prints a PluginError's message alone and exits 1; the message names the page and the file."""
    from mkdocs.exceptions import PluginError

    results = _script("docs_results")
    hooks = _script("docs_hooks")
    if content is not None:
        (tmp_path / "broken.json").write_text(content)
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    page = type("Page", (), {"file": type("File", (), {"src_uri": "benchmarks/x.md"})()})()
    with pytest.raises(PluginError) as raised:
        hooks.on_page_markdown("# X\n\n<!-- prunefx:results broken -->\n", page, None, None)
    message = str(raised.value)
    assert "\n" not in message and "docs/benchmarks/x.md" in message and "benchmarks/results/broken.json" in message


def test_benchmark_tables_are_rendered_by_their_script_from_the_results_file():
    results = _script("docs_results")
    data = json.loads((results.RESULTS / "one_shot_accuracy.json").read_text())
    best = max((run for run in data["runs"] if run["fraction"] == 0.5), key=lambda run: run["test_accuracy"])
    text = results.results_markdown("one_shot_accuracy")
    assert f"{100 * best['test_accuracy']:.2f}" in text.split("??? info")[0]  # the script's own table
    assert results.script_of("depth_vs_channel").name == "depth_vs_channel.py"


def test_benchmark_pages_retype_no_table():
    """A results table on a benchmark page is generated from its JSON; only the index's table of pages is typed."""
    for page in sorted((DOCS / "benchmarks").glob("*.md")):
        typed = [line for line in page.read_text().splitlines() if line.lstrip().startswith("|")]
        assert page.name == "index.md" or not typed, (page.name, typed[:2])


@pytest.mark.parametrize("name", ["int8_latency", "int8_head_to_head", "int8_methods", "latency_budget",
                                  "prune_defaults", "prune_latency"])
def test_the_page_renderers_read_their_results_files(name):
    """Each renderer of docs_tables reads the current file (a failure would fall back to generic tables) and
    shows a figure taken from the file independently here."""
    results = _script("docs_results")
    data = json.loads((results.RESULTS / f"{name}.json").read_text())
    text = _script("docs_tables").renderer_of(name)(data)
    page = results.results_markdown(name)
    assert "\n|---" in text and page.startswith(text) and data["command"] in page
    if name == "prune_latency":
        speedup = data["models"][0]["variants"]["prunefx-global"]["latency"]["speedup"]
        assert f"**{speedup:.2f}x**" in text
    if name == "int8_methods":
        assert f"{100 * data['models']['resnet20']['mse']:.2f}" in text


def test_every_howto_links_an_example_that_exists():
    for page in sorted((DOCS / "howto").glob("*.md")):
        examples = re.findall(r"examples/(\w+\.py)", page.read_text())
        assert examples, f"{page.name} names no example"
        for name in examples:
            assert (ROOT / "examples" / name).is_file(), (page.name, name)


def nav_titles() -> dict[str, str]:
    """Every navigation title of mkdocs.yml and the page it opens."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    return dict(re.findall(r"^\s*- (.+?): (\S+\.md)$", nav, re.MULTILINE))


# The questions a reader must answer from the navigation alone: words of the title to look for, and what
# the page it opens must hold (the answer itself).
NAV_QUESTIONS = {
    "how do I prune my detector and train it again": (("detector", "train"), "yolo.train("),
    "which flag sets the latency budget": (("latency budget", "--speedup"), "--speedup 2"),
    "what does report.json's budget hold": (("report.json", "budget"), "### `budget`"),
    "which files will prunefx refuse to open": (("refuses to open",), "These are refused"),
}


@pytest.mark.parametrize("question", NAV_QUESTIONS)
def test_the_navigation_answers_the_readers_questions(question):
    words, answer = NAV_QUESTIONS[question]
    titles = [(title, page) for title, page in nav_titles().items() if all(w in title.lower() for w in words)]
    assert len(titles) == 1, (question, titles)  # one title leads there, not several to choose between
    assert answer in (DOCS / titles[0][1]).read_text(), (question, titles[0])


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, page


def test_no_internal_issue_numbers_in_user_facing_text():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        assert not re.search(r"\bissue \d+", page.read_text(), re.IGNORECASE), page


def documented_keys(page: Path, heading: str) -> set[str]:
    """The keys in the first column of the table under `heading` (`a`, `b` in one cell count as two)."""
    section = page.read_text().split(heading + "\n", 1)[1].split("\n#", 1)[0]
    cells = re.findall(r"^\| (.*?) \|", section, re.MULTILINE)
    return {key for cell in cells for key in re.findall(r"`(\w+)`", cell)}


@pytest.mark.slow
def test_the_report_json_reference_lists_exactly_what_prune_writes(tmp_path):
    from prunefx.cli import main

    assert main(["prune", "prunefx:resnet20", "--macs", "0.5", "-o", str(tmp_path)]) == 0
    written = set(json.loads((tmp_path / "report.json").read_text()))
    page = DOCS / "reference" / "report-json.md"
    assert documented_keys(page, "## Common keys") | documented_keys(page, "## `prunefx prune`") == written


# Top-level entries that are made by a build or a run, never part of the repository.
MADE_HERE = {"build", "out", "site"}
PLACEHOLDERS = re.compile(r"\b(NAME|MODEL|COMMIT|SCRIPT|SUFFIX|FILE|FOLDER|K|N)\b")


def _top_level() -> set[str]:
    return {entry.name for entry in ROOT.iterdir() if not entry.name.startswith(".")
            and entry.name not in MADE_HERE and not entry.name.endswith(".egg-info")}


def _expanded(word: str) -> list[str]:
    """`a_{b,c}.md` as `a_b.md` and `a_c.md` (the shell's brace form, used for families of files)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [expanded for part in match.group(1).split(",")
            for expanded in _expanded(word[:match.start()] + part + word[match.end():])]


def repository_paths(markdown: str) -> set[str]:
    """Words of the page's code (inline and fenced) that name a file or folder of this repository: they start
    with one of its top-level entries and go on with a `/` (`benchmarks/results/x.md`, `docs/design.md`),
    or they are a bare Markdown file name (`DESIGN.md`). Options, `~/...`, URLs and output paths are not."""
    top = _top_level()
    code = re.findall(r"```[^\n]*\n(.*?)```", markdown, re.DOTALL)
    code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL))
    found = set()
    for word in " ".join(code).replace("=", " ").split():
        word = word.strip("\"'(),;:").split("::")[0].split("#")[0]
        word = re.sub(r":\d+$", "", word).removeprefix("./")
        first = word.split("/")[0]
        if ("/" in word and first in top) or re.fullmatch(r"[A-Z][A-Z_]*\.md", word):
            found.update(_expanded(word))
    return found


def _exists(path: str, *folders: Path) -> bool:
    """The file or folder exists under one of `folders`: as written, as a module (`passes/core/pipeline`,
    `passes/core/pipeline.Pipeline`), or with its placeholders (`benchmarks/results/NAME.json`) as a pattern."""
    module = re.sub(r"(\.[A-Za-z_]\w*)*$", "", path) + ".py" if not path.endswith((".py", "/")) else path
    pattern = PLACEHOLDERS.sub("*", path)
    return any((folder / path).exists() or (folder / module).is_file() or (pattern != path and any(folder.glob(pattern))) or
               ("*" in path and any(folder.glob(path))) for folder in folders)


def linked_paths(markdown: str) -> set[str]:
    """The targets of the page's Markdown links that are files here (not URLs, not anchors on the page)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL))
    return {target.split("#")[0] for target in targets
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")}


DOC_PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_repository_paths_are_found_in_code_and_placeholders_match_files():
    page = ("Run `.venv/bin/python benchmarks/run_all.py --out build/x` or `pytest tests/test_docs.py::test_a`;\n"
            "see `DESIGN.md`, `docs/{index,concepts}.md`, `report.md`, `report.json` and `~/data/coco`.\n"
            "```sh\npython examples/plain_loop_recovery.py -o out/plain\n```\n")
    assert repository_paths(page) == {"benchmarks/run_all.py", "tests/test_docs.py", "DESIGN.md", "docs/index.md",
                                      "docs/concepts.md", "examples/plain_loop_recovery.py"}
    assert _exists("benchmarks/results/NAME.json", ROOT) and not _exists("benchmarks/results/NAME.csv", ROOT)
    assert not _exists("DESIGN.md", ROOT) and not _exists("passes/no_such_module.Name", ROOT)
    assert _exists("passes/core/pipeline.Pipeline", ROOT) and _exists("passes/core/pipeline", ROOT)


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page):
    text = page.read_text()
    # A bare file name may be a page beside this one, a results file or a file at the top of the repository.
    folders = (ROOT, page.parent, DOCS, ROOT / "benchmarks" / "results")
    missing = sorted(path for path in repository_paths(text) if not _exists(path, *folders))
    missing += sorted(link for link in linked_paths(text) if link and not (page.parent / link).exists())
    assert not missing, missing


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_commit_hash_in_the_documentation(page):
    """A page states what the tool does now: a commit hash belongs to git's history, not to the text."""
    words = re.findall(r"\b[0-9a-f]{7,40}\b", page.read_text())
    hashes = [word for word in words if re.search(r"[a-f]", word) and re.search(r"[0-9]", word)]
    assert not hashes, hashes


def test_benchmark_results_keep_one_current_file_per_benchmark():
    """Reruns, versions and per-commit copies live in git's history, not beside the current file."""
    results = ROOT / "benchmarks" / "results"
    folders = [path.name for path in results.iterdir() if path.is_dir()]
    versioned = [path.name for path in results.iterdir()
                 if re.search(r"_(v\d+b?|partial|rerun|run\d*|[0-9a-f]{7,40})$", path.stem)]
    assert not folders and not versioned, folders + versioned


def test_library_comments_say_why_without_citing_results_files_issues_or_missing_pages():
    """The library's comments and docstrings explain the code itself: a measured fact may stay, the results file,
    the issue number or a design page that is not in the repository may not."""
    citation = re.compile(r"benchmarks/results|\bissue \d+|\(issue|\bDESIGN\.md")
    found = [f"{path.relative_to(ROOT)}:{number}" for folder in ("graph", "passes", "runtime", "prunefx")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if citation.search(line)]
    assert not found, found


def test_the_recipe_table_gives_each_summary_whole():
    """recipes.md's table took each file's first line: five summaries stopped mid-sentence ("... during")."""
    rows = _script("docs_reference").recipes_table().splitlines()[2:]
    assert len(rows) >= 9 and all(row.endswith(". |") for row in rows), [row for row in rows if not row.endswith(". |")]
