"""`gateway-approvals`: see and decide held tool calls from a terminal.

A client of the approvals API like any other (docs/approvals-cli.md). Its modules:

    commands  the command line: arguments, the one-shot commands, `main`
    client    the approvals API over HTTP, and its errors as one line each
    render    what the gateway sends, as terminal text with control characters escaped
    decisions the `calls` items of a decision body
    inbox     what `watch` waits on: feed events and typed lines, put by two threads
    watch     the `watch` loop: offer each pending call once, post the answer
"""

from gateway.approvals_cli.commands import main
from gateway.approvals_cli.watch import QUESTION

__all__ = ["QUESTION", "main"]
