"""The examples of docs/http-api.md, run in order against a fresh server: each ``http`` block is a
request (method and path, optional headers, a blank line, the body) and the ``json`` block after it
the exact answer ("..." stands for any value), or a ``csv`` block the exact file an export answers."""
from __future__ import annotations

import json
from typing import Any

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig

from doc_blocks import blocks
from http_client import HttpClient

DOC = "docs/http-api.md"


def request_of(text: str) -> tuple[str, str, dict[str, str], str]:
    """(method, path, headers, body) of an ``http`` block."""
    if "\n\n" in text:  # headers, a blank line, the body
        head, _, body = text.partition("\n\n")
    else:  # the request line, then the body
        head, _, body = text.partition("\n")
    lines = head.split("\n")
    method, path = lines[0].split(" ", 1)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return method, path, headers, body


def matches(expected: Any, got: Any) -> bool:
    """``got`` equals ``expected``, where "..." in ``expected`` matches anything."""
    if expected == "...":
        return True
    if isinstance(expected, dict):
        return isinstance(got, dict) and expected.keys() == got.keys() and all(matches(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(got, list) and len(expected) == len(got) and all(map(matches, expected, got))
    return expected == got


def test_http_api_examples_run_as_written():
    found = blocks(DOC)
    pairs = [(a, b) for a, b in zip(found, found[1:]) if a.lang == "http" and b.lang in ("json", "csv")]
    assert len(pairs) == 14
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
    server = SegengineServer(engine, ServerConfig(port=0, http_port=0, refresh_ms=0), owns_engine=True).start()
    try:
        http = HttpClient(f"http://127.0.0.1:{server.http_port}")
        for request, response in pairs:
            method, path, headers, body = request_of(request.text)
            content_type = headers.pop("Content-Type", "application/json")
            answer = http.call(method, path, body.encode() if body else None, content_type=content_type,
                               headers=headers)
            if response.lang == "csv":
                assert answer.text.replace("\r\n", "\n") == response.text, f"{DOC} line {request.line}: {answer.text}"
                continue
            expected = json.loads(response.text)
            assert matches(expected, answer.json), f"{DOC} line {request.line}: {answer.text}"
    finally:
        server.stop(grace_s=1)
