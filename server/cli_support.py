"""Checks shared by the ``segengine`` subcommands: argument types, schema files, ports, errors.

Argument types raise ``argparse.ArgumentTypeError`` (a usage error: one line, exit status 2);
:class:`CliError` is work that failed (one line, exit status 1 unless it says otherwise).

>>> count("5"), count("0")
(5, 0)
>>> count("-5")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected an integer >= 0, got '-5'
>>> clock("2026-11-20T10:00:00Z"), clock("2026-11-20"), clock("1795168800000")
(1795168800000, 1795132800000, 1795168800000)
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from engine.timeparse import parse_query_ts


def say_line(line: str) -> None:
    """Print ``line`` with one write, so a background server's lines and a foreground command's lines
    sharing a terminal or pipe never interleave mid-line (``print`` writes the text and the newline
    separately when stdout is unbuffered)."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


class CliError(Exception):
    """Failed work, reported as one line on stderr with exit status ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


#: Counts (0 allowed) and sizes (at least 1).
count = int_at_least(0)
positive = int_at_least(1)


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    value = count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def number_at_least(low: float, what: str) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low`` (``what`` names it in errors)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what} >= {low:g}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


#: Durations in seconds (0 allowed) and sizes in megabytes (more than 0).
seconds = number_at_least(0, "a number of seconds")
megabytes = number_at_least(0.001, "a number of megabytes")


def clock(text: str) -> int:
    """An argparse type: a query clock, epoch milliseconds or ISO 8601 (a date alone: midnight UTC)."""
    stripped = text.strip()
    try:
        if stripped.lstrip("-").isdigit():
            return parse_query_ts(int(stripped))
        return parse_query_ts(stripped)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected epoch milliseconds or ISO 8601 time: {error}") from None


def existing_file(text: str) -> str:
    """An argparse type: a path that names a readable file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}" if not path.exists() else f"not a file: {text}")
    return text


def read_schema(path: str) -> Any:
    """The Schema in the JSON file ``path``; CliError naming the file on any problem."""
    from engine.schema import Schema

    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as error:
        raise CliError(f"cannot read schema {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CliError(f"schema {path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise CliError(f"schema {path} is not valid JSON: {error.msg} at line {error.lineno} "
                       f"column {error.colno}") from None
    try:
        return Schema.from_dict(spec)
    except ValueError as error:
        raise CliError(f"schema {path}: {error}") from None


def check_port_free(host: str, port_number: int) -> None:
    """CliError if nothing may listen on ``host:port_number`` now (port 0 always passes)."""
    if port_number == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port_number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CliError(f"cannot listen on {host}:{port_number}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            raise CliError(f"cannot listen on {host}:{port_number}: {error.strerror or error} "
                           "(choose another --port, or stop what uses it)") from None


def check_utf8(argv: list[str]) -> None:
    """A usage error (status 2) if an argument holds bytes that are not UTF-8 text."""
    for text in argv:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise CliError(f"argument is not valid UTF-8 text: {shown}", status=2) from None
