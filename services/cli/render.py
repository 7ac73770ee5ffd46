"""What the ``scimflow`` commands print: tables, colours, JSON, and error messages.

Every command writes through the two consoles here (``out`` for results, ``err`` for
progress and errors), so output stays consistent and tests can read one place.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from schemas import ActivityRecord, ErrorRecord

__all__ = [
    "emit",
    "err",
    "fail",
    "line",
    "out",
    "print_action",
    "print_activity",
    "print_capabilities",
    "print_connection",
    "print_error",
    "print_json",
    "print_reports",
    "print_trace",
    "say",
]

out = Console()
err = Console(stderr=True)


def fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as the user's to read; raise the result (exit code 2)."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(2)


def line(text: str, style: str | None = None) -> None:
    # Not markup: paths such as emails[type eq "work"] would read as style tags.
    out.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def say(text: str) -> None:
    # Never wrapped: each line must stay pasteable into a shell, however narrow the terminal.
    out.print(text, soft_wrap=True, highlight=False)


def print_json(value: Any) -> None:
    out.print_json(msgspec.json.encode(value, enc_hook=str).decode())


def emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """``result`` as one line of JSON (``--json``), else as ``human`` prints it."""
    if as_json:
        sys.stdout.write(msgspec.json.encode(result, enc_hook=str).decode() + "\n")
    else:
        human(result)


def print_capabilities(capabilities: dict[str, Any] | None, problems: list[dict[str, Any]]) -> None:
    """What ``validate --online`` and ``test-connection`` show of a target's capabilities
    (given as the JSON the control plane returns) and the app's mapping problems."""
    from services.scim.capabilities import Capabilities, Problem, describe

    if capabilities is None:
        return
    caps = msgspec.convert(capabilities, Capabilities)
    line("  target capabilities:")
    for text in describe(caps):
        line(f"    {text}")
    if problems:
        line(f"  mapping problems ({len(problems)}): what the target declares cannot take these",
             style="yellow")
        for problem in problems:
            line(f"    {msgspec.convert(problem, Problem)}", style="yellow")
    elif any(r.schemas_read for r in caps.resources.values()):
        line("  mappings: every mapped attribute is one the target declares")
    else:
        line("  mappings: not checked (no schema of the target was read)")


def print_connection(r: dict[str, Any]) -> None:
    out.print(f"{r['app']}: [{'green' if r['ok'] else 'red'}]{'OK' if r['ok'] else 'FAILED'}[/] "
              f"{r['message']}", highlight=False)
    # An admin API older than capability discovery answers without these.
    print_capabilities(r.get("capabilities"), r.get("problems") or [])


def print_reports(reports: list[dict[str, Any]]) -> None:
    """``scimflow status``: one table row per app, or one app's details."""
    if len(reports) == 1:
        _print_details(reports[0])
        return
    table = Table("app", "mode", "status", "users", "disabled", "groups", "escrowed", "last cycle",
                  "cycle s", "held removals", "last error")
    for r in reports:
        table.add_row(r["app"], r["mode"], _status_text(r), str(r["managed_users"]),
                      str(r["disabled_users"]), str(r["managed_groups"]), str(r["escrowed"]),
                      _cycle_text(r), _seconds(r["last_cycle_seconds"]), str(r["held_removals"]),
                      (r["last_error"] or "-")[:60])
    out.print(table)


def _status_text(r: dict[str, Any]) -> str:
    text = str(r["status"]) + (" (dry run)" if r.get("dry_run") else "")
    return f"{text}: {r['status_reason']}" if r.get("status_reason") else text


def _cycle_text(r: dict[str, Any]) -> str:
    last = _when(r["last_cycle_end"])
    progress = r.get("progress")
    if r["cycle_running"] and progress:
        of = f"/{progress['total']}" if progress.get("total") is not None else ""
        last += f" (running: {progress['done']}{of})"
    return last


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _print_details(r: dict[str, Any]) -> None:
    """Entra's "Synchronization details" pane for one app."""
    table = Table(show_header=False, title=f"sync details: {r['app']}", title_justify="left")
    rows = [
        ("mode", r["mode"]), ("status", _status_text(r)),
        ("status set by", f"{r.get('status_by') or '-'} at {_when(r.get('status_at'))}"),
        ("managed users", f"{r['managed_users']} ({r['disabled_users']} disabled)"),
        ("managed groups", str(r["managed_groups"])), ("escrowed objects", str(r["escrowed"])),
        ("held removals", str(r["held_removals"])),
        ("first cycle start", _when(r["first_cycle_start"])),
        ("last cycle start", _when(r["last_cycle_start"])),
        ("last cycle end", _when(r["last_cycle_end"])),
        ("last cycle duration s", _seconds(r["last_cycle_seconds"])),
        ("running cycle", _cycle_text(r) if r["cycle_running"] else "none"),
        ("outcomes", ", ".join(f"{k}={v}" for k, v in sorted(r["outcomes"].items())) or "-"),
        ("last error", f"{r['last_error']} at {_when(r['last_error_at'])}" if r["last_error"] else "-"),
    ]
    if r.get("quarantined_since"):
        rows.append(("quarantined", f"since {_when(r['quarantined_since'])}, "
                                    f"next probe {_when(r.get('next_probe'))}"))
    rows.append(("target capabilities", _capabilities_text(r.get("capabilities"))))
    rows.extend(("mapping problem", problem) for problem in r.get("mapping_problems") or [])
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


def _capabilities_text(found: dict[str, Any] | None) -> str:
    """One line of what the target declares (the writer reads it at start)."""
    if not found:
        return "not read yet"

    def flag(name: str) -> str:
        value = found.get(name)
        return "unknown" if value is None else ("yes" if value else "no")
    bulk = flag("bulk")
    if found.get("bulk") and found.get("bulk_max_operations"):
        bulk += f" (max {found['bulk_max_operations']} operations)"
    return (f"PATCH {flag('patch')}, bulk {bulk}, filter {flag('filter')}, ETag {flag('etag')}, "
            f"sort {flag('sort')}")


def print_action(result: dict[str, Any]) -> None:
    """What a control command (stop, start, restart, allow-deletes) was accepted to do."""
    action, app = result["action"], result["app"]
    text = {
        "stop": f"{app}: provisioning is off (changes are kept and applied by `scimflow start {app}`)",
        "start": f"{app}: provisioning is on",
        "restart": f"{app}: restart requested (request {result.get('request_id')}, "
                   f"links {'reset' if result.get('reset_links') else 'kept'}); the initial cycle runs again",
        "allow-deletes": f"allowed the removals held for {app} (staged before {result.get('before')})",
    }[action]
    out.print(text, highlight=False)


def print_trace(trace: dict[str, Any], indent: str = "") -> None:
    """A provision-on-demand trace: the outcome, then one row per step (and per member)."""
    colour = {"success": "green", "failure": "red", "dryRun": "cyan"}.get(trace["outcome"], "yellow")
    out.print(f"{indent}[bold]{trace['object_type']} {trace['object_id']}[/]: "
              f"[{colour}]{trace['outcome']}[/] {trace.get('action') or ''} "
              f"{trace.get('target_id') or ''} - {trace['message']}"
              + (f" ({trace['elapsed_ms']} ms)" if "elapsed_ms" in trace else ""), highlight=False)
    table = Table("step", "status", "detail")
    for step in trace["steps"]:
        table.add_row(step["name"], step["status"], step["detail"])
    out.print(table)
    for member in trace.get("members", []):
        print_trace(member, indent="  member ")


def print_activity(r: ActivityRecord) -> None:
    props = ", ".join(p.name for p in r.modified_properties)
    colour = {"success": "green", "failure": "red", "skipped": "dim"}.get(r.status, "yellow")
    out.print(f"[{colour}]{r.at:%H:%M:%S} {r.app} {r.action:<8} {r.status:<8}[/] "
              f"{r.source_identity or r.source_id} {r.target_id or ''} {props}", highlight=False)


def print_error(r: ErrorRecord) -> None:
    out.print(f"[red]{r.at:%H:%M:%S} {r.service} {r.error_code}[/] {r.app or ''} "
              f"{r.source_id or ''}: {r.reason}", highlight=False)
