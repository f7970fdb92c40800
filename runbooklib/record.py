"""How an executed notebook becomes a record that stands alone.

A reviewer opening an archived ``.ipynb`` or ``.html`` months later, without the archive's index,
must see at the top what ran, where, by whom, why, when, how it ended, and what it changed. So the
archived copy gets a header cell rendered from the manifest; the parameters the runner injected sit
above the notebook's defaults (which they replace); and progress-bar redraws are reduced to what a
terminal finally showed, instead of being archived as stderr noise.
"""

from __future__ import annotations

import copy
import html
from collections import Counter

import nbformat

HEADER_TAG = "runbook-record-header"
ENDINGS = {
    "succeeded": "",
    "failed": "**This run FAILED.** Its record is kept as it stood when it stopped.",
    "interrupted": "**This run was INTERRUPTED** before it finished. What it applied before that is listed below.",
    "killed": "**This run was KILLED** (no chance to clean up). Only what it had journaled is known.",
}


def title(manifest: dict) -> str:
    """The record's name, as a browser tab or a file list shows it."""
    env = manifest.get("environment", {}).get("name", "?")
    return f"{manifest.get('notebook', '?')} on {env}: {manifest.get('status', '?')} ({manifest.get('run_id', '?')})"


def header_markdown(manifest: dict) -> str:
    """The record's first cell: who, what, where, why, when, how it ended, what it changed."""
    m = manifest
    env = m.get("environment", {})
    git = m.get("git") or {}
    verdict = (m.get("verdict") or {}).get("verdict")
    changes = m.get("changes") or []
    per_host = Counter(c.get("host", "?") for c in changes)
    rows = [
        ("run", f"`{m.get('run_id')}`" + (" (interactive, in JupyterLab)" if m.get("interactive") else "")),
        ("runbook", f"`{m.get('notebook')}`"),
        ("environment", f"{env.get('name')} ({env.get('kind')}); personal data stays in {env.get('data_country')}"
                        + ("; **lab simulation**" if m.get("simulated") else "")),
        ("mode", m.get("mode", "")),
        ("operator", m.get("operator", "")),
        ("reason", m.get("reason") or "(none given)"),
        ("started", m.get("started_at", "")),
        ("ended", f"{m.get('ended_at', '')} ({m.get('duration_s', 0):.1f} s)" if m.get("duration_s") is not None
                  else m.get("ended_at", "")),
        ("status", f"**{m.get('status')}**" + (f", verdict **{verdict}**" if verdict else "")),
        ("git", f"`{git.get('commit') or 'not a git checkout'}`" + (" (with local changes)" if git.get("dirty") else "")),
        ("parameters", f"`{(m.get('params') or {}).get('path')}` sha256 `{(m.get('params') or {}).get('sha256', '')[:16]}`"),
        ("changes", f"{len(changes)} on {len(per_host)} host(s)" + (": " + ", ".join(f"{h} {n}" for h, n in per_host.items())
                                                                    if per_host else "")),
    ]
    lines = [f"# Record of run {m.get('run_id')}", ""]
    ending = ENDINGS.get(m.get("status", ""), "")
    failure = m.get("failure") or {}
    if ending:
        lines += [ending + (f" {html.escape(str(failure.get('ename', '')))}: {html.escape(str(failure.get('evalue', '')))}"
                            if failure else ""), ""]
    lines += ["| | |", "| --- | --- |"] + [f"| {k} | {_cell(v)} |" for k, v in rows]
    problems = (m.get("verdict") or {}).get("problems") or []
    if problems:
        lines += ["", f"**Verdict {verdict}:** " + "; ".join(_cell(p) for p in problems[:20])
                  + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")]
    if changes:
        lines += ["", "<details><summary>Changes applied, in order</summary>", "",
                  "| at | host | operation | change |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.get('at', '')} | {_cell(c.get('host', ''))} | {_cell(c.get('operation', ''))} | {_cell(c.get('change', ''))} |"
                  for c in changes]
        lines += ["", "</details>"]
    return "\n".join(lines)


def _cell(value) -> str:
    """A value in a markdown table cell: HTML escaped (a reason or an operator is typed by people), pipes kept."""
    return html.escape(str(value)).replace("|", "\\|").replace("\n", " ")


def arrange(nb: nbformat.NotebookNode, manifest: dict) -> nbformat.NotebookNode:
    """A copy of the executed notebook arranged as a record (header first, injected parameters on top)."""
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if HEADER_TAG not in c.get("metadata", {}).get("tags", [])]
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    defaults = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if injected and defaults and defaults[0] < injected[0]:
        cells.insert(defaults[0], cells.pop(injected[0]))
    for cell in cells:
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "stream":
                out["text"] = _as_a_terminal_shows("".join(out.get("text", "")))
        if cell.get("outputs"):
            cell["outputs"] = [o for o in cell["outputs"] if not (o.get("output_type") == "stream" and not o.get("text"))]
    header = nbformat.v4.new_markdown_cell(header_markdown(manifest), metadata={"tags": [HEADER_TAG]})
    nb.cells = [header, *cells]
    nb.metadata["title"] = title(manifest)
    return nb


def _as_a_terminal_shows(text: str) -> str:
    """Each line as it finally stood: a progress bar's carriage-return redraws keep only their last state."""
    if "\r" not in text:
        return text
    out = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        out.append(parts[-1] if parts else "")
    return "\n".join(out)


def describe(manifest: dict, root=None) -> str:
    """``runbook show``: the record as a person reads it in a terminal, recap before detail."""
    m = manifest
    env = m.get("environment", {})
    if m.get("record") == "plan approval":
        plan = m.get("plan") or {}
        return "\n".join([
            f"approval {m.get('run_id')}  of plan run {m.get('approves')} ({m.get('notebook')} on {env.get('name')})",
            f"  approver   {m.get('approver')} (signed with SSH key, namespace {m.get('namespace')})",
            f"  signed at  {m.get('started_at')}",
            f"  change     {m.get('change') or '-'}",
            f"  plan       digest {m.get('plan_digest')}; planned by {plan.get('operator')}; parameters sha256 "
            f"{(plan.get('params_sha256') or '')[:12]}; commit {(plan.get('git_commit') or '-')[:12]}",
            *[f"    part {i}: {p.get('title')}: {p.get('steps')} step(s)" for i, p in enumerate(plan.get("parts") or [], 1)],
            *[f"  {role:<10} {(str(root) + '/' if root else '') + str(info.get('path'))}" for role, info in (m.get("files") or {}).items()]])
    verdict = m.get("verdict") or {}
    changes = m.get("changes") or []
    failure = m.get("failure") or {}
    lines = [f"run {m.get('run_id')}  {m.get('notebook')} on {env.get('name')} ({env.get('kind')})"
             + ("  [interactive]" if m.get("interactive") else "") + ("  [lab simulation]" if m.get("simulated") else ""),
             f"  status     {m.get('status')}" + (f", verdict {verdict.get('verdict')}" if verdict.get("verdict") else ""),
             f"  mode       {m.get('mode')}",
             f"  operator   {m.get('operator')}",
             f"  reason     {m.get('reason') or '(none given)'}",
             *([f"  change     {m['change']}"] if m.get("change") else []),
             *([f"  plan       {sum(p.get('count', 0) for p in m['plans'])} step(s) in {len(m['plans'])} part(s), digest "
                f"{m.get('plan_digest')}"] if m.get("plans") else []),
             f"  started    {m.get('started_at')}  ended {m.get('ended_at')}  ({m.get('duration_s') or 0:.1f} s)",
             f"  git        {(m.get('git') or {}).get('commit') or '-'}" + (" (dirty)" if (m.get("git") or {}).get("dirty") else ""),
             f"  parameters {(m.get('params') or {}).get('path')} (sha256 {(m.get('params') or {}).get('sha256', '')[:12]})"]
    if failure:
        where = f" at {failure['cell']}" if failure.get("cell") else ""
        lines.append(f"  failure    {failure.get('ename')}{where}: {failure.get('evalue')}")
    for problem in verdict.get("problems") or []:
        lines.append(f"  problem    {problem}")
    per_host = Counter(c.get("host", "?") for c in changes)
    lines.append(f"  changes    {len(changes)}" + (" on " + ", ".join(f"{h} ({n})" for h, n in per_host.items()) if changes else ""))
    lines += [f"    {c.get('at', '')}  {c.get('host', '')}  {c.get('operation', '')}: {c.get('change', '')}" for c in changes]
    files = m.get("files") or {}
    if files:
        lines.append("  files")
        for role, info in files.items():
            path = info.get("path") if isinstance(info, dict) else info
            lines.append(f"    {role:<9}{(str(root) + '/' if root else '') + str(path)}")
    return "\n".join(lines)
