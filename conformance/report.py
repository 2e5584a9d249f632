"""docs/conformance.md from the harness's junit results and classification.toml.

Every test that does not pass is matched against the classification rules in order
(the first whose ``test`` glob and ``error`` regex both match wins); one that no rule
matches is reported as "gap (unclassified)".
"""

from __future__ import annotations

import fnmatch
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tomllib

CATEGORIES = {
    "real_checkpoint": "not portable: depends on the real checkpoint",
    "vllm_internals": "not portable: unit-tests vLLM internals",
    "network": "not portable: needs vLLM's test media or data sets from the network",
    "cenote_extension": "documented cenote extension",
    "gap": "gap",
}
NOT_PORTABLE = ("real_checkpoint", "vllm_internals", "network")
UNCLASSIFIED = "gap (unclassified)"


@dataclass(frozen=True)
class Rule:
    category: str
    reason: str
    test: str = "*"
    error: str = ""

    def matches(self, node_id: str, cause: str) -> bool:
        # Node ids hold "[params]": brackets in a pattern are literal, not a set.
        return fnmatch.fnmatchcase(node_id, self.test.replace("[", "[[]")) and (
            not self.error or re.search(self.error, cause) is not None)


@dataclass
class Outcome:
    node_id: str
    result: str  # passed, failed, error, skipped
    cause: str = ""  # the failure's (or skip's) one-line message
    category: str = ""
    reason: str = ""


def load_rules(path: Path) -> list[Rule]:
    data = tomllib.loads(path.read_text())
    rules = [Rule(**entry) for entry in data.get("rule", [])]
    for rule in rules:
        if rule.category not in CATEGORIES:
            raise ValueError(f"{path}: unknown category {rule.category!r} "
                             f"(one of {', '.join(CATEGORIES)})")
        re.compile(rule.error)
    return rules


def one_line(message: str, limit: int = 240) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _node_id(test_file: str, classname: str, name: str) -> str:
    module = test_file.removesuffix(".py").replace("/", ".")
    inner = classname[len(module) + 1:] if classname.startswith(module + ".") else ""
    return "::".join(filter(None, [test_file, inner.replace(".", "::"), name]))


# What a server started by vLLM's RemoteOpenAIServer (cenote serve) said before exiting.
SERVER_ERROR = re.compile(r"(ERROR cenote: .*|cenote serve: error: .*|^\w*Error: .*)$")


def server_error(log: Path) -> str:
    """The first error a server logged in a test file's output (the test itself only
    sees "Server exited unexpectedly")."""
    if not log.exists():
        return ""
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith(("E ", ">")) and (match := SERVER_ERROR.search(line)):
            return one_line(match.group(1))
    return ""


def read_junit(test_file: str, xml: Path) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    exit_cause = ""
    for case in ET.parse(xml).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        node_id = _node_id(test_file, classname, name)
        if not classname:  # a collection error names the module, not a test
            node_id = test_file
        result, cause = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                result = {"failure": "failed"}.get(tag, tag)
                text = element.get("message") or element.text or ""
                cause = one_line(text)
                if tag == "error" and (element.text or "").strip():
                    cause = _last_error_line(element.text) or cause
                if tag == "failure":
                    cause = _last_error_line(element.text or "") or cause
                break
        if "Server exited unexpectedly" in cause:
            exit_cause = exit_cause or server_error(xml.with_suffix(".log"))
            cause = f"{cause} (server: {exit_cause})" if exit_cause else cause
        previous = outcomes.get(node_id)
        if previous is None or previous.result == "passed":  # a teardown error wins
            outcomes[node_id] = Outcome(node_id, result, cause)
    return list(outcomes.values())


def _last_error_line(traceback: str) -> str:
    """pytest's ``E   ...`` lines of the last traceback entry: the exception raised, and
    for ``pytest.raises(match=...)`` the expected and actual messages."""
    lines = [ln[4:].strip() for ln in traceback.splitlines() if ln.startswith("E   ")]
    lines = [ln for ln in lines if ln and not ln.startswith(("Use -v", "Full diff", "At index"))]
    if not lines:
        return ""
    error = next((ln for ln in lines if re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b",
                                                   ln)), lines[0])
    details = [ln for ln in lines if ln.startswith(("Expected regex", "Actual message"))]
    return one_line(" / ".join([error, *details]), limit=400)


def classify(outcome: Outcome, rules: list[Rule]) -> None:
    if outcome.result in ("passed", "skipped"):
        return
    for rule in rules:
        if rule.matches(outcome.node_id, outcome.cause):
            outcome.category, outcome.reason = rule.category, rule.reason
            return
    outcome.category, outcome.reason = "", UNCLASSIFIED


def _label(outcome: Outcome) -> str:
    return CATEGORIES.get(outcome.category, UNCLASSIFIED)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tally(reasons: Counter) -> str:
    return "".join(f"- {count} × {_md(reason)}\n" for reason, count in reasons.most_common()) \
        or "- none\n"


def write_report(test_files: list[str], results: Path, classification: Path,
                 out: Path, vllm_version: str, tested: str = "cenote") -> str:
    rules = load_rules(classification)
    rows, sections = [], []
    totals: Counter = Counter()
    by_reason: dict[str, Counter] = {"gap": Counter(), "cenote_extension": Counter()}
    for test_file in test_files:
        stem = test_file.removeprefix("tests/").removesuffix(".py").replace("/", "__")
        xml, status_file = results / f"{stem}.xml", results / f"{stem}.json"
        status = json.loads(status_file.read_text()) if status_file.exists() else None
        if status is None:
            rows.append(f"| `{test_file}` | not run | | | | | | |")
            totals["files not run"] += 1
            continue
        if status["timed_out"] or not xml.exists():
            outcome = Outcome(test_file, "error", f"no result: the file ran past "
                              f"{status['seconds']:.0f} s" if status["timed_out"]
                              else f"no result (pytest exit {status['rc']})")
            outcomes = [outcome]
        else:
            outcomes = read_junit(test_file, xml)
        for outcome in outcomes:
            classify(outcome, rules)
            if outcome.result in ("failed", "error"):
                kind = outcome.category if outcome.category in by_reason else (
                    "gap" if not outcome.category else "")
                if kind:
                    by_reason[kind][outcome.reason] += 1
        count = Counter(o.result for o in outcomes)
        kinds = Counter(o.category or "unclassified" for o in outcomes
                        if o.result in ("failed", "error"))
        not_portable = sum(kinds[c] for c in NOT_PORTABLE)
        gaps = kinds["gap"] + kinds["unclassified"]
        rows.append(f"| `{test_file}` | {len(outcomes)} | {count['passed']} | "
                    f"{count['failed'] + count['error']} | {count['skipped']} | "
                    f"{not_portable} | {kinds['cenote_extension']} | {gaps} |")
        totals.update(collected=len(outcomes), passed=count["passed"],
                      failed=count["failed"] + count["error"], skipped=count["skipped"],
                      not_portable=not_portable, extension=kinds["cenote_extension"],
                      gap=gaps, files=1)
        lines = []
        for o in outcomes:
            if o.result == "passed":
                continue
            if o.result == "skipped":
                lines.append(f"- `{o.node_id}` — skipped: {_md(o.cause)}")
                continue
            what = f"{_label(o)}: {_md(o.reason)}" if o.category else UNCLASSIFIED
            if o.category in ("gap", "") and o.cause:
                what += f" — `{_md(o.cause)}`"
            lines.append(f"- `{o.node_id}` — {what}")
        if lines:
            sections.append(f"### `{test_file}`\n\n" + "\n".join(lines) + "\n")

    summary = (f"{totals['collected']} tests in {totals['files']} files: "
               f"{totals['passed']} passed, {totals['failed']} did not pass "
               f"({totals['not_portable']} not portable, {totals['extension']} cenote "
               f"extensions, {totals['gap']} gaps), {totals['skipped']} skipped"
               + (f"; {totals['files not run']} files not run" if totals["files not run"]
                  else ""))
    text = f"""# vLLM {vllm_version} conformance

vLLM's own pooling tests (`tests/entrypoints/pooling/**`, `tests/models/language/pooling/*`
from its source distribution), run unchanged against cenote by `make conformance`
(`conformance/run.py`): `vllm.LLM`, `PoolingParams`, the output classes and the response
models are cenote's (`conformance/vllm_standin/`), `vllm serve` is `cenote serve`, and the
checkpoints are stand-ins with random weights under the tests' model ids
(`conformance/checkpoints.py`; models with no stand-in fail to load, offline). Why a test
does not pass is kept in `conformance/classification.toml`. To rerun: `make conformance`
(all files; `ARGS="--files 'tests/entrypoints/pooling/embed/*'"` for some,
`ARGS="--cenote-commit HEAD"` to test a commit rather than the work tree).

Tested: {tested}. **{summary}.**

Categories: *not portable* (depends on the real checkpoint's values, files or code;
unit-tests vLLM internals; needs vLLM's media from the network), *documented cenote
extension*, *gap* (to fix in cenote). "gap (unclassified)" is a failure no rule explains yet.

| file | tests | passed | did not pass | skipped | not portable | extension | gap |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n\n## Gaps by cause\n\n" + _tally(by_reason["gap"]) \
        + "\n## Documented cenote extensions\n\n" + _tally(by_reason["cenote_extension"]) \
        + "\n## Tests that do not pass\n\n" + "\n".join(sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return summary
