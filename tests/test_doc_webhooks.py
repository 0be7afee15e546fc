"""The "Webhooks" section of docs/activation.md runs: the receiver and engine examples print what the
document says, the body sample has the fields a real batch has, the CLI lines parse, and the
documented defaults are the engine's."""
from __future__ import annotations

import contextlib
import io
import json
import shlex

from engine.destinations import DeliveryOptions
from server.cli import build_parser

from doc_blocks import ROOT, _FENCE, section

DOC = "docs/activation.md"


def webhook_blocks(lang: str) -> list[str]:
    """The fenced blocks of language ``lang`` in the Webhooks section."""
    return [m.group(2) for m in _FENCE.finditer(section(DOC, "Webhooks")) if m.group(1) == lang]


def test_the_examples_print_what_the_document_says() -> None:
    namespace: dict = {"__name__": "activation_doc"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in webhook_blocks("python"):
            exec(compile(block, f"{ROOT / DOC}", "exec"), namespace)  # noqa: S102 - the document's own code
    [expected] = webhook_blocks("output")
    assert out.getvalue() == expected


def test_the_body_sample_has_the_fields_of_a_batch() -> None:
    from engine.destinations.outbox import Batch, BatchChange

    [sample] = webhook_blocks("json")
    documented = json.loads(sample)
    real = json.loads(Batch([BatchChange(1, "entered", "u1", 5, 0.0)]).encode("crm", "fr"))
    assert documented.keys() == real.keys()
    assert all(change.keys() == real["changes"][0].keys() for change in documented["changes"])


def test_the_command_lines_parse() -> None:
    [commands] = webhook_blocks("sh")
    lines = [line for line in commands.splitlines() if line.strip()]
    assert len(lines) == 5
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "segengine"
        build_parser().parse_args(words[1:])


def test_the_documented_defaults_are_the_engines() -> None:
    [signature] = webhook_blocks("text")
    defaults = DeliveryOptions()
    for name, value in defaults.to_dict().items():
        assert f"{name}={value:_}" in signature or f"{name}={value}" in signature, name
