"""README.md and docs/*.md: every relative link points at a file that exists and a heading it has."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside ``` code fences (links and headings inside code are not links and headings)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in prose(page.read_text(encoding="utf-8")).splitlines()
            if re.match(r"#{1,6} ", line)}


def test_anchor_follows_github_rules() -> None:
    assert anchor("Host memory on CPU runs (`EFFNET_MALLOC`)") == "host-memory-on-cpu-runs-effnet_malloc"
    assert anchor("The demo (`make demo`)") == "the-demo-make-demo"
    assert anchor("Precision, EMA, speed options") == "precision-ema-speed-options"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(REPO_ROOT)})")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no heading #{fragment} in {linked.name})")
    assert not broken, f"{page.name}: broken links: " + "; ".join(broken)


def test_docs_pages_are_linked_from_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in PAGES[1:] if f"](docs/{p.name}" not in readme] == []


ENTRY_POINT = re.compile(r"(train\.py|eval\.py|export\.py|benchmark\.py|infer/infer_onnx\.py|-m src\.models\.convert"
                         r"|-m src\.data\.shards)(.*)")
BENCHMARK_MODES = ("data", "model", "onnx", "memory", "train", "finetune")
# Prints {"script mode": "--help text"} for every entry point, in one process (torch imported once).
HELP_PRINTER = """
import contextlib, io, json, runpy, sys
texts = {}
for key in sys.argv[1:]:
    script, *extra = key.split(" ")
    out = io.StringIO()
    sys.argv = [script, *extra, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if script.startswith("src."):
                runpy.run_module(script, run_name="__main__")
            else:
                runpy.run_path(script, run_name="__main__")
        except SystemExit:
            pass
    texts[key] = out.getvalue()
print(json.dumps(texts))
"""


def commands(page: Path) -> list[str]:
    """Shell lines in code blocks (continuations joined, comments dropped) and `python …` spans in prose."""
    found, fenced, pending = [], False, ""
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found += re.findall(r"`((?:python|bash) [^`]+)`", line)
            continue
        line = re.split(r"\s#\s", line)[0]
        pending += line.rstrip("\\") + " "
        if not line.rstrip().endswith("\\"):
            found.append(pending.strip())
            pending = ""
    return found


def test_every_flag_in_the_docs_exists() -> None:
    """A flag the README or docs/ show for train/eval/export/benchmark/the runner is in that program's --help."""
    import json
    import subprocess
    import sys

    uses: list[tuple[str, str, str, set[str]]] = []  # page, help key, command, flags
    for page in PAGES:
        for command in commands(page):
            match = ENTRY_POINT.search(command)
            if not match:
                continue
            script, rest = match.group(1).removeprefix("-m "), match.group(2)
            key = script
            if script == "benchmark.py":
                words = rest.split()
                mode = next((w for w in words[:1] if w in BENCHMARK_MODES), None)  # the mode follows the script
                key = f"benchmark.py {mode}" if mode else script
            uses.append((page.name, key, command, set(re.findall(r"(?<![\w-])--[a-z_0-9]+", rest))))
    keys = sorted({key for _, key, _, _ in uses} | {"benchmark.py"})
    assert len(uses) > 50 and "train.py" in keys and "export.py" in keys  # the parser above found the commands
    done = subprocess.run([sys.executable, "-c", HELP_PRINTER, *keys], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
                          check=True, timeout=300)
    known = {key: set(re.findall(r"--[a-z_0-9]+", text)) for key, text in json.loads(done.stdout).items()}
    assert all(len(flags) >= 3 for flags in known.values()), {k: len(v) for k, v in known.items()}
    known["train.py"] |= {"--config", "--check"}  # train.py's help lists the config keys after these two
    unknown = [f"{page}: {command[:80]}: {sorted(flags - known[key] - known['benchmark.py'])}"
               for page, key, command, flags in uses if flags - known[key] - known["benchmark.py"]]
    assert not unknown, "flags that do not exist:\n" + "\n".join(unknown)


FILE_PATH = re.compile(r"^(?:(?:src|infer|bench|tests)/[\w./-]+\.py|scripts/[\w.-][\w./-]*)$")
RUN_MODULE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
DOTTED = re.compile(r"(?<![\w.])src(?:\.\w+)+")
PROJECT_PACKAGES = ("src", "infer", "bench")


def module_file(dotted: str) -> Path | None:
    """The file of a project module: ``a/b.py``, or ``a/b/__init__.py`` for a package."""
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def defines(path: Path, name: str) -> bool:
    """A simple text search: ``def name``, ``class name``, ``name =`` (or ``name: T =``), or a re-export of it
    (``import … name``, an indented ``name,`` in a parenthesised import list, ``"name"`` in ``__all__``)."""
    text = path.read_text(encoding="utf-8")
    n = re.escape(name)
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{n}\b|^\s*{n}\s*(?::[^=\n]+)?=(?!=)"
                     rf"|^[^\n#]*\bimport\s[^\n]*\b{n}\b|^\s+{n},?\s*$|__all__[^\]]*[\"']{n}[\"']",
                     text, re.MULTILINE) is not None


def dotted_name_problem(dotted: str) -> str | None:
    """Why ``src.x.y`` (a module, or a module's attribute) does not exist; None when it does."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:cut]))
        if path is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        if len(rest) > 1:
            return f"no module {'.'.join(parts[:cut + 1])}"
        if defines(path, rest[0]):
            return None
        return f"{'.'.join(rest)} is not defined in {path.relative_to(REPO_ROOT)}"
    return "no such module"


def named_paths_and_modules(page: Path) -> list[str]:
    """What ``page`` names that does not exist, one line each."""
    text = re.sub(r"https?://\S+", " ", page.read_text(encoding="utf-8"))  # paths inside URLs are not ours
    stale: set[str] = set()
    for token in re.findall(r"[\w./*{}-]+", text):
        path = re.sub(r"^(?:\.\.?/)+", "", token).rstrip(".,:;")
        if "*" in path or "{" in path or not FILE_PATH.match(path):
            continue
        if not (REPO_ROOT / path).exists():
            stale.add(f"{path} (no such file)")
    for module in RUN_MODULE.findall(text):
        module = module.rstrip(".")
        if module.split(".")[0] not in PROJECT_PACKAGES:
            continue  # python -m pytest, pip, torch.distributed.run
        path = module_file(module)
        if path is None:
            stale.add(f"python -m {module} (no such module)")
        elif path.name == "__init__.py" and not (path.parent / "__main__.py").is_file():
            stale.add(f"python -m {module} (a package without __main__.py)")
    for span in re.findall(r"`([^`\n]+)`", prose(text)):
        for dotted in DOTTED.findall(span):
            problem = dotted_name_problem(dotted)
            if problem:
                stale.add(f"`{dotted}` ({problem})")
    return sorted(stale)


def test_named_paths_and_modules_exist() -> None:
    """Every src/ infer/ bench/ tests/ .py file, scripts/ file, ``python -m`` module and `src.x.y` name in
    README.md and docs/*.md exists (a dotted name may end in a name its module defines)."""
    stale = [f"{page.relative_to(REPO_ROOT)}: {name}" for page in PAGES for name in named_paths_and_modules(page)]
    if stale:
        pytest.fail("paths and modules named in the docs that do not exist:\n" + "\n".join(f"  {s}" for s in stale),
                    pytrace=False)


def test_the_docs_name_checker_accepts_real_names_and_rejects_stale_ones() -> None:
    assert dotted_name_problem("src.models.build_model") is None  # re-exported by src/models/__init__.py
    assert dotted_name_problem("src.common.preprocess.MAX_IMAGE_PIXELS") is None
    assert dotted_name_problem("src.models.effnet") is None
    assert dotted_name_problem("src.models.no_such_name") is not None
    assert dotted_name_problem("src.no_such_package.x") is not None
    assert dotted_name_problem("src.nowhere") is not None
