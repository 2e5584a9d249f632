"""The examples in README.md and docs/*.md run, so an example that stops working fails.

Each test is named after its page and the block's place among the page's fenced code
blocks, counted from 1 (``docs/server.md-3``). ``python`` blocks run in this process
against the real ``cenote.LLM``; in shell blocks (``bash``, ``shell``, ``sh``,
``console``) only the ``curl`` commands run, against one real ``cenote serve`` of the
bundled all-MiniLM-L6-v2 started for the module (``localhost:8000`` in an example is
replaced by its address), and must answer 2xx with JSON. A python block that talks to
``localhost:8000`` runs against that server too. A block that cannot run here is
marked on the line before its fence with ``<!-- example: skip (why) -->``; a mark
without a reason fails collection. Relative links in the pages must resolve.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving import cenote_serve

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED_HOSTS = ("localhost:8000", "127.0.0.1:8000")
SHELL_LANGUAGES = {"bash", "shell", "sh", "console"}

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)")
MARK = re.compile(r"^\s*<!--\s*example\b")
SKIP_MARK = re.compile(r"^\s*<!--\s*example:\s*skip\s*\((?P<reason>.*\S.*)\)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class CodeBlock:
    page: str          # path from the repository root
    index: int         # place among the page's fenced blocks, from 1
    line: int          # line of the opening fence, from 1
    end: int           # line of the closing fence
    language: str
    source: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.page}-{self.index}"


def code_blocks(page: Path) -> list[CodeBlock]:
    """The fenced code blocks of ``page``, with the skip reason marked before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    name = page.relative_to(ROOT).as_posix()
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        skip_reason = None
        if i > 0 and MARK.match(lines[i - 1]):
            marked = SKIP_MARK.match(lines[i - 1])
            if not marked:
                raise ValueError(f"{name}:{i}: an example mark reads "
                                 "'<!-- example: skip (why it cannot run) -->'")
            skip_reason = marked["reason"].strip()
        blocks.append(CodeBlock(page=name, index=len(blocks) + 1, line=i + 1, end=end + 1,
                                language=opening["language"].lower(),
                                source=textwrap.dedent("\n".join(lines[i + 1:end])),
                                skip_reason=skip_reason))
        i = end + 1
    return blocks


def curl_commands(source: str) -> list[str]:
    """The ``curl`` commands of a shell block, each joined onto one line."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if line.split(maxsplit=1)[:1] == ["curl"]:
            commands.append(line)
    return commands


BLOCKS = [block for page in PAGES for block in code_blocks(page)]
PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python"]
CURL_BLOCKS = [block for block in BLOCKS
               if block.language in SHELL_LANGUAGES and curl_commands(block.source)]


def params(blocks: list[CodeBlock]) -> list:
    return [pytest.param(block, id=block.name,
                         marks=[pytest.mark.skip(reason=f"{block.name}: {block.skip_reason}")]
                         if block.skip_reason else [])
            for block in blocks]


def served_here(text: str, server) -> str:
    """``text`` with the documented ``localhost:8000`` pointed at the test server."""
    address = server.url.removeprefix("http://")
    for host in DOCUMENTED_HOSTS:
        text = text.replace(host, address)
    return text


@pytest.fixture(scope="module")
def docs_server():
    with cenote_serve([]) as server:  # no MODEL: the bundled all-MiniLM-L6-v2
        yield server


def test_the_docs_hold_python_and_curl_examples():
    assert (ROOT / "docs" / "README.md") in PAGES
    assert PYTHON_BLOCKS, "no ```python blocks found: is the fence parser broken?"
    assert CURL_BLOCKS, "no shell blocks with curl found: is the fence parser broken?"


@pytest.mark.parametrize("block", params(PYTHON_BLOCKS))
def test_python_example_runs(block: CodeBlock, request):
    source = block.source
    if any(host in source for host in DOCUMENTED_HOSTS):
        source = served_here(source, request.getfixturevalue("docs_server"))
    # Blank lines in front, so a traceback names the page's own line numbers.
    code = compile("\n" * block.line + source, str(ROOT / block.page), "exec")
    exec(code, {"__name__": "__docs_example__"})


@pytest.mark.parametrize("block", params(CURL_BLOCKS))
def test_curl_example_answers_2xx_json(block: CodeBlock, docs_server, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    for command in curl_commands(block.source):
        assert any(host in command for host in DOCUMENTED_HOSTS), (
            f"{block.name}: a curl example addresses localhost:8000: {command}")
        body = tmp_path / "body"
        body.unlink(missing_ok=True)
        # Silent but for errors, the body to a file and the status on stdout.
        script = (f"curl -sS -o {shlex.quote(str(body))} -w '%{{http_code}}' "
                  + served_here(command, docs_server).removeprefix("curl"))
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (
            f"{block.name}: curl exited {done.returncode}: {done.stderr}\n{command}")
        answer = body.read_text(encoding="utf-8") if body.exists() else ""
        status = int(done.stdout.strip() or 0)
        assert 200 <= status < 300, f"{block.name}: HTTP {status}: {answer}\n{command}"
        try:
            json.loads(answer)
        except json.JSONDecodeError as error:
            pytest.fail(f"{block.name}: the answer is not JSON ({error}): {answer!r}")


def lines_outside_code_blocks(page: Path) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    for block in code_blocks(page):
        lines[block.line - 1:block.end] = [""] * (block.end - block.line + 1)
    return lines


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in lines_outside_code_blocks(page):
        heading = HEADING.match(line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading["title"].lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(f"{slug}-{count}" if count else slug)
    return anchors


def prose(page: Path) -> str:
    """``page`` without its code blocks and inline code, where links are not links."""
    return re.sub(r"`[^`]*`", "", "\n".join(lines_outside_code_blocks(page)))


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_point_at_files_and_headings_that_exist(page: Path):
    broken = []
    for link in LINK.finditer(prose(page)):
        target = link["target"]
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
