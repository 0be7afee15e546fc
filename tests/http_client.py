"""A small HTTP client for the tests of ``segengine serve --http-port``, checking every JSON answer
against the server's OpenAPI document (``/openapi.json``) with jsonschema."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from jsonschema import Draft202012Validator


class Answer:
    """One HTTP answer: status, headers, body bytes and text and (for JSON) the decoded body."""

    def __init__(self, status: int, headers: Any, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        self.text = body.decode(errors="replace")
        self.json = json.loads(self.text) if headers.get("Content-Type", "").startswith("application/json") else None


class OpenApiChecker:
    """Validates answers against the OpenAPI document's response schema of their path, method and status."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.paths = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
                      for path in document["paths"]]
        self.checked = 0

    def template(self, method: str, path: str) -> str:
        """The document's path template of ``method path`` (a literal path before a templated one)."""
        found = [template for pattern, template in self.paths
                 if pattern.match(path.split("?")[0]) and method.lower() in self.document["paths"][template]]
        assert found, f"{method} {path} is not in the OpenAPI document"
        return min(found, key=lambda template: template.count("{"))

    def check(self, method: str, path: str, answer: Answer) -> None:
        """AssertionError unless ``answer`` is what the document says ``method path`` answers."""
        operation = self.document["paths"][self.template(method, path)][method.lower()]
        response = operation["responses"].get(str(answer.status))
        assert response is not None, f"{method} {path} answered {answer.status}, not in the document"
        content_type = answer.headers.get("Content-Type", "").split(";")[0]
        assert content_type in response["content"], f"{method} {path} answered {content_type}, not in the document"
        if content_type != "application/json":
            self.checked += 1
            return
        schema = response["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": self.document["components"]})
        errors = sorted(validator.iter_errors(answer.json), key=str)
        assert not errors, f"{method} {path} {answer.status}: {errors[0].message} in {answer.text[:300]}"
        self.checked += 1


class HttpClient:
    """Calls to one server's HTTP port; API answers (``/v1/...``) are checked against its OpenAPI document."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base
        self.token = token
        self.checker = OpenApiChecker(self.call("GET", "/openapi.json").json)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             headers: dict[str, str] | None = None, token: str | None = None, check: bool = True) -> Answer:
        """``method path`` with ``body`` (JSON-encoded unless str or bytes); the answer, checked against the
        OpenAPI document for ``/v1/`` paths unless not ``check`` (a path the document does not have)."""
        data = body if isinstance(body, (bytes, type(None))) else \
            (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        sent = {"Content-Type": content_type, **(headers or {})}
        bearer = token if token is not None else self.token
        if bearer:
            sent["Authorization"] = f"Bearer {bearer}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            answer = Answer(error.code, error.headers, error.read())
        if check and path.startswith("/v1/"):
            self.checker.check(method, path, answer)
        return answer
