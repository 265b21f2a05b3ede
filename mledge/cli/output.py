"""How ``mledge`` answers: JSON for machines, tables for people, and ``--help`` pages that show defaults.

Which one: ``--json`` (global, or a command's own) always gives JSON and ``--table`` always a table; otherwise a
table when stdout is a terminal and JSON when it is not. So Airflow tasks (``MledgeHook``, which also passes
``--json``), scripts and pipes keep getting the documented JSON, and a person at a terminal gets a table.

A command has a table when it has a renderer here (``RENDERERS``, keyed by its function); any other command
prints its JSON in a terminal too, indented and highlighted. The tables show the same facts as the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

# --- help ------------------------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option with a meaningful default says it."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and action.default not in (None, False, "", argparse.SUPPRESS) and not (
            isinstance(action, argparse._HelpAction | argparse._VersionAction))

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):
            action.help = "default: %(default)s"  # argparse prints no help line for an option without help
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """mledge's parser: its subcommands inherit the formatter that shows defaults and keeps examples' layout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# command path -> examples shown at the end of its --help (commands whose module has none of its own).
EXAMPLES: dict[tuple[str, ...], str] = {
    (): """output:
  a table when stdout is a terminal, else JSON; --json or --table choose explicitly.

examples:
  mledge status                      # sites, SuperNodes, edge workers, runs and models as tables
  mledge status --json | jq .sites   # the same facts as JSON
  mledge console federation          # what the Federation page in the Airflow UI shows
  mledge drift alerts --status new   # drift alerts waiting for a person
  mledge <command> --help            # each command's options, choices and defaults
""",
    ("status",): """examples:
  mledge status            # tables in a terminal
  mledge status --json     # the same facts as one JSON document (also when piped)
  mledge --table status    # tables even when piped, e.g. into less
""",
    ("drift", "alerts"): """examples:
  mledge drift alerts                          # every evaluation, newest first
  mledge drift alerts --site plant_b --status new
  mledge drift alerts --json                   # as the drift review page reads them
""",
}


def add_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Put ``EXAMPLES`` under the commands they belong to (leaving any epilog a command already has)."""
    if path in EXAMPLES and not parser.epilog:
        parser.epilog = EXAMPLES[path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_examples(sub, (*path, name))


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--json", dest="output_json", action="store_true",
                        help="print JSON (the default when stdout is not a terminal)")
    choice.add_argument("--table", dest="output_table", action="store_true",
                        help="print tables (the default in a terminal)")


def wants_json(args: argparse.Namespace, stream: IO[str] | None = None) -> bool:
    """JSON if asked for (globally or by a command's own ``--json``), a table if asked for, else JSON unless
    ``stream`` (stdout) is a terminal."""
    if getattr(args, "output_json", False) or getattr(args, "json", False):
        return True
    if getattr(args, "output_table", False):
        return False
    stream = stream or sys.stdout
    return not (hasattr(stream, "isatty") and stream.isatty())


def emit(document: Any, args: argparse.Namespace, stream: IO[str] | None = None) -> None:
    """Print a command's result: its JSON, or its table (``RENDERERS``), or indented JSON in a terminal."""
    stream = stream or sys.stdout
    if wants_json(args, stream):
        json.dump(document, stream, indent=2, default=str)
        stream.write("\n")
        return
    from rich.console import Console

    console = Console(file=stream, width=None if stream.isatty() else 160, soft_wrap=False)
    render = RENDERERS.get(command_key(args.func))
    if render is None:
        console.print_json(json.dumps(document, default=str))
    else:
        render(document, console)


def command_key(func: Callable) -> str:
    return f"{func.__module__}.{func.__name__}"


# --- cells -----------------------------------------------------------------------------------------------------


def _dash(value: Any) -> str:
    return "–" if value in (None, "", [], {}) else str(value)


def _when(value: Any) -> str:
    """An ISO time or epoch milliseconds as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value in (None, ""):
        return "–"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


def _yes(flag: Any, yes: str = "yes", no: str = "no") -> str:
    return f"[green]{yes}[/]" if flag else f"[red]{no}[/]"


def _aliases(aliases: Mapping[str, Any]) -> str:
    return ", ".join(f"{a}→v{v}" for a, v in sorted(aliases.items())) or "–"


def _error(console: Any, what: str, error: Any) -> None:
    if error:
        console.print(f"[bold red]{what}:[/] {error}", highlight=False)


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _models_table(console: Any, models: list[dict], title: str = "Registered models") -> None:
    table = _table(title, "Model", "Version", "Aliases", "Flower run", "DAG run", "Promotion reason")
    for model in models:
        versions = model.get("versions") or [{}]
        for i, v in enumerate(versions):
            table.add_row(model["name"] if i == 0 else "", _dash(v.get("version")), ", ".join(v.get("aliases") or [])
                          or "–", _dash(v.get("flower_run_id")), _dash(v.get("dag_run_id")),
                          _dash(v.get("promotion_reason")))
    console.print(table)


# --- mledge status ---------------------------------------------------------------------------------------------


def render_status(status: Mapping[str, Any], console: Any) -> None:
    """``mledge status``: the same facts as its JSON, as tables."""
    sites = _table("Sites", "Site", "Batches", "SuperNode", "Node id", "SuperNode pid", "Edge worker", "State",
                   "Last heartbeat", "Worker pid", "Store")
    for s in status.get("sites", []):
        worker = s.get("edge_worker") or {}
        supernode = _yes(s.get("connected"), "connected", "not connected")
        if s.get("refused"):
            supernode = f"[red]refused: {s['refused']}[/]"
        sites.add_row(
            s["site"], str(s.get("batches", "–")), supernode, _dash(s.get("node_id")), _dash(s.get("supernode_pid")),
            f"{_yes(worker.get('connected'), 'connected', 'not connected')} {_dash(worker.get('worker'))}",
            _dash(worker.get("state")), _when(worker.get("last_heartbeat")), _dash(worker.get("pid")),
            _dash(s.get("store")),
        )
    console.print(sites)
    link = status.get("superlink") or {}
    console.print(f"[bold]SuperLink[/] {link.get('address')}: {link.get('online_nodes', 0)} node(s) online; "
                  f"refused: {', '.join(link.get('refused') or []) or 'none'}", highlight=False)
    _error(console, "SuperLink", link.get("error"))
    _error(console, "Edge workers", status.get("edge_workers_error"))

    runs = _table("Flower runs", "Run id", "Status", "Details", "Pending at", "Finished at", "Elapsed")
    for r in status.get("flower_runs", []):
        runs.add_row(_dash(r.get("run_id")), _dash(r.get("status")), _dash(r.get("status_details")),
                     _when(r.get("pending_at")), _when(r.get("finished_at")), _dash(r.get("elapsed")))
    console.print(runs)

    _models_table(console, status.get("registered_models", []))
    _error(console, "Registry", status.get("registry_error"))

    components = _table("Components", "Component", "Side", "Pid", "Healthy")
    for name, c in (status.get("components") or {}).items():
        components.add_row(name, _dash(c.get("side")), _dash(c.get("pid")), _yes(c.get("healthy")))
    console.print(components)
    for name, url in (status.get("urls") or {}).items():
        console.print(f"[bold]{name}[/] {url}", highlight=False)


# --- mledge console federation ---------------------------------------------------------------------------------


def render_federation(doc: Mapping[str, Any], console: Any) -> None:
    summary = doc.get("summary") or {}
    console.print(
        f"[bold]Federation[/]: {summary.get('connected', 0)} of {len(doc.get('sites', []))} SuperNodes connected, "
        f"at least {doc.get('min_clients')} needed to train: "
        + ("[green]can train[/]" if summary.get("can_train") else "[red]cannot train now[/]"),
        highlight=False,
    )
    sites = _table("Sites", "Site", "Registered", "SuperNode", "Edge worker", "Last heartbeat", "Last batch",
                   "Open drift alerts", "Requires training")
    for s in doc.get("sites", []):
        node, worker = s["supernode"], s["edge_worker"]
        sn = f"[red]refused: {node['refused']}[/]" if node.get("refused") else _yes(node["connected"], "connected",
                                                                                      "not connected")
        sites.add_row(
            s["site"], _yes(s["registered"]), sn,
            f"{_yes(worker.get('connected'), 'connected', 'not connected')} ({_dash(worker.get('state'))})",
            _when(worker.get("last_heartbeat")), _dash(s.get("last_batch")),
            ", ".join(f"#{a['id']} {a['batch']} {a['kind']} ({a['status']})" for a in s["open_drift_alerts"]) or "–",
            "; ".join(s["training_reasons"]) or "no",
        )
    console.print(sites)
    runs = _table("Last training runs", "MLflow run", "Status", "Flower run", "DAG run", "Strategy",
                  "F1 (failure class) per round")
    for r in doc.get("runs", []):
        rounds = " ".join(f"{p['round']}:{p['value']:.3f}" for p in r["rounds"]["global"]) or "–"
        runs.add_row(r["run_id"], f"{r['status']} / {_dash(r.get('flower_status'))}", _dash(r.get("flower_run_id")),
                     _dash(r.get("dag_run_id")), _dash(r.get("strategy")), rounds)
    console.print(runs)
    models = doc.get("models") or {}
    listed = [models["global"], *models.get("sites", {}).values()] if models else []
    _models_table(console, [m for m in listed if m.get("registered")], "Models")
    for what, error in (doc.get("errors") or {}).items():
        _error(console, what, error)


# --- mledge drift alerts ---------------------------------------------------------------------------------------


def render_alerts(alerts: list[Mapping[str, Any]], console: Any) -> None:
    table = _table(f"Drift alerts ({len(alerts)})", "Id", "Site", "Batch", "Kind", "p-value", "Decision", "Status",
                   "Updated by", "Updated at")
    for a in alerts:
        p = a.get("p_value")
        table.add_row(str(a["id"]), a["site"], a["batch"], a["kind"], "–" if p is None else f"{p:.3g}",
                      a["decision"], a["status"], _dash(a.get("updated_by")), _when(a.get("updated_at")))
    console.print(table)


RENDERERS: dict[str, Callable[[Any, Any], None]] = {
    "mledge.cli.overview.cmd_status": render_status,
    "mledge.cli.console.cmd_federation": render_federation,
    "mledge.cli.drift.cmd_alerts": render_alerts,
}
