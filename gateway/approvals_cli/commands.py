"""The command line: its arguments, the one-shot commands, and `main`.

    gateway-approvals list [--json]
    gateway-approvals show ID [--json]
    gateway-approvals approve ID [--call C ...] [--grant-ttl S]
    gateway-approvals reject ID --reason TEXT [--call C ...]
    gateway-approvals edit ID --call C --arguments JSON [--grant-ttl S]
    gateway-approvals respond ID --call C --result TEXT
    gateway-approvals watch

The gateway is at `--url` (default `GATEWAY_URL`, else http://127.0.0.1:8000), the key in
`GATEWAY_API_KEY`. An approve or edit of a named call carries the arguments hash the
session shows, so it holds only for what was seen. Exit status: 0 done, 1 the gateway
refused or could not be reached (one line on stderr says why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from gateway.approvals_cli.client import ApiError, CliError, Gateway, Json
from gateway.approvals_cli.decisions import call_item, chosen_calls, find_call, json_object
from gateway.approvals_cli.render import explain, list_lines, outcome_text, session_text
from gateway.approvals_cli.watch import run_watch

DEFAULT_URL = "http://127.0.0.1:8000"


def run_list(gateway: Gateway, args: argparse.Namespace) -> None:
    listed = gateway.pending()
    if args.json:
        print(json.dumps(listed, indent=2))
        return
    if not listed["data"]:
        print("no pending approval sessions", file=sys.stderr)
    for line in list_lines(listed["data"], time.time()):
        print(line)


def run_show(gateway: Gateway, args: argparse.Namespace) -> None:
    session = gateway.session(args.id)
    print(json.dumps(session, indent=2) if args.json else session_text(session, time.time()))


def run_approve(gateway: Gateway, args: argparse.Namespace) -> None:
    if not args.call and args.grant_ttl is None:
        _decide(gateway, args.id, {"decision": "approve"})
        return
    session = gateway.session(args.id)
    calls = chosen_calls(session, args.call)
    items = [call_item(c, "approve", grant_ttl=args.grant_ttl) for c in calls]
    _decide(gateway, args.id, {"calls": items} if items else {"decision": "approve"}, args.call)


def run_reject(gateway: Gateway, args: argparse.Namespace) -> None:
    if not args.call:
        _decide(gateway, args.id, {"decision": "reject", "reason": args.reason})
        return
    session = gateway.session(args.id)
    items = [call_item(c, "reject", reason=args.reason) for c in chosen_calls(session, args.call)]
    _decide(gateway, args.id, {"calls": items}, args.call)


def run_edit(gateway: Gateway, args: argparse.Namespace) -> None:
    call = find_call(gateway.session(args.id), args.call)
    item = call_item(call, "edit", arguments=args.arguments, grant_ttl=args.grant_ttl)
    _decide(gateway, args.id, {"calls": [item]}, [args.call])


def run_respond(gateway: Gateway, args: argparse.Namespace) -> None:
    item = {"tool_call_id": args.call, "decision": "respond", "result": args.result}
    _decide(gateway, args.id, {"calls": [item]}, [args.call])


def _decide(
    gateway: Gateway, session_id: str, body: Json, call_ids: Sequence[str] | None = None
) -> None:
    print(outcome_text(gateway.decide(session_id, body), call_ids or ()))


# Arguments


def _json_argument(raw: str) -> Json:
    try:
        return json_object(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _seconds(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {raw!r}")
    return int(raw)


Command = Callable[[Gateway, argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway-approvals",
        description="See and decide the tool calls an approval gateway holds. "
        "The API key comes from GATEWAY_API_KEY.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_URL") or DEFAULT_URL,
        help="the gateway (default: GATEWAY_URL, else %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    command("list", run_list, "one line per pending session").add_argument(
        "--json", action="store_true", help="print the API's JSON"
    )
    show = command("show", run_show, "one session, its context and its calls")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    approve = command("approve", run_approve, "approve the named calls (default: all pending)")
    approve.add_argument("id")
    approve.add_argument("--call", action="append", help="a tool call id (repeatable)")
    _grant_option(approve)
    reject = command("reject", run_reject, "reject the named calls (default: all pending)")
    reject.add_argument("id")
    reject.add_argument("--reason", required=True, help="what the model is told")
    reject.add_argument("--call", action="append", help="a tool call id (repeatable)")
    edit = command("edit", run_edit, "run a call with other arguments")
    edit.add_argument("id")
    edit.add_argument("--call", required=True, help="the tool call id")
    edit.add_argument("--arguments", required=True, type=_json_argument, help="a JSON object")
    _grant_option(edit)
    respond = command("respond", run_respond, "give the model a result instead of running")
    respond.add_argument("id")
    respond.add_argument("--call", required=True, help="the tool call id")
    respond.add_argument("--result", required=True, help="the tool result the model gets")
    command("watch", run_watch, "follow the live feed and ask about each new call on stdin")
    return parser


def _grant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grant-ttl",
        type=_seconds,
        metavar="SECONDS",
        help="also allow the same call in this conversation without asking, for this long",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run the command; exit 1 with one line on stderr on failure."""
    args = build_parser().parse_args(argv)
    gateway = Gateway(args.url, os.environ.get("GATEWAY_API_KEY", "").strip())
    try:
        args.run(gateway, args)
    except ApiError as error:
        _fail(explain(error, gateway, getattr(args, "id", "")))
    except CliError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        gateway.close()


def _fail(message: str) -> None:
    print(f"gateway-approvals: {message}", file=sys.stderr)
    sys.exit(1)
