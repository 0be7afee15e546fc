"""Every example of docs/query-language.md runs: sessions (doctest), queries (against the naive
oracle on a generated data set), cookbook entries (non-empty there) and error messages (exact)."""
from __future__ import annotations

import doctest
import re

import pytest

from engine import Engine, QueryError, Schema
from engine.query import bind, parse
from loaders.generator import generate
from loaders.writer import dataset_records

from doc_blocks import blocks, section
from oracle import NaiveStore

DOC = "docs/query-language.md"
NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z, the clock the document states
PROFILES, EVENTS, SEED = 3000, 30000, 19


def saved_segments() -> dict[str, str]:
    """The ``segments`` block: ``name: query`` per line."""
    (block,) = blocks(DOC, "segments")
    return dict(line.split(": ", 1) for line in block.text.strip().splitlines())


def queries() -> list[tuple[str, bool]]:
    """(query, is a cookbook entry) for every ``query`` block."""
    cookbook = {b.text for b in blocks("docs/query-language.md", "query") if f"```query\n{b.text}```" in
                section(DOC, "Cookbook")}
    return [(" ".join(b.text.split()), b.text in cookbook) for b in blocks(DOC, "query")]


def expand(text: str, segments: dict[str, str]) -> str:
    """``text`` with each SEGMENT('name') replaced by the segment's query (the oracle has no catalog)."""
    return re.sub(r"SEGMENT\('(\w+)'\)", lambda m: f"({expand(segments[m.group(1)], segments)})", text)


@pytest.fixture(scope="module")
def loaded():
    ds = generate(PROFILES, EVENTS, seed=SEED, now_ms=NOW)
    schema = Schema.from_dict(ds.schema)
    oracle = NaiveStore(ds.schema)
    profiles, events = (list(r) for r in dataset_records(ds))
    oracle.upsert(profiles)
    oracle.track(events)
    engine = Engine(schema, shards=1)
    engine.clock = lambda: NOW
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    for name, query in saved_segments().items():
        engine.create_segment(name, query)
    yield engine, oracle, schema
    engine.close()


def test_the_document_states_this_data_set() -> None:
    text = section(DOC, "The segment query language")
    assert f"generate({PROFILES}, {EVENTS}, seed={SEED}, now_ms={NOW})" in text
    assert "2026-11-20T10:00:00Z" in text


def test_the_cookbook_has_at_least_15_segments() -> None:
    assert sum(is_cookbook for _, is_cookbook in queries()) >= 15


@pytest.mark.parametrize(("query", "is_cookbook"), queries())
def test_query_examples_match_the_oracle(loaded, query: str, is_cookbook: bool) -> None:
    engine, oracle, schema = loaded
    expected = sorted(oracle.evaluate(bind(parse(expand(query, saved_segments())), schema), NOW))
    assert engine.ids(query, now=NOW) == expected
    assert engine.count(query, now=NOW) == len(expected)
    if is_cookbook:
        assert expected, "a cookbook segment should select someone on the generated data"


def test_saved_segment_definitions_match_the_oracle(loaded) -> None:
    engine, oracle, schema = loaded
    for name, query in saved_segments().items():
        assert engine.count(f"SEGMENT('{name}')", now=NOW) == len(oracle.evaluate(bind(parse(query), schema), NOW))


ERRORS = [(b.text.rsplit("\n-> ", 1)[0], b.text.rsplit("\n-> ", 1)[1].rstrip("\n")) for b in blocks(DOC, "error")]


@pytest.mark.parametrize(("query", "message"), ERRORS)
def test_error_examples_give_exactly_their_message(loaded, query: str, message: str) -> None:
    engine = loaded[0]
    with pytest.raises(QueryError) as caught:
        engine.count(query, now=NOW)
    assert str(caught.value) == message


def test_every_error_block_has_a_message() -> None:
    assert len(ERRORS) == len(blocks(DOC, "error")) >= 30


def test_sessions_run_as_doctests() -> None:
    sessions = blocks(DOC, "pycon")
    assert sessions
    text = "\n".join(b.text for b in sessions)
    test = doctest.DocTestParser().get_doctest(text, {}, DOC, DOC, sessions[0].line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert (runner.failures, runner.tries > 20) == (0, True)


def test_the_keyword_list_is_complete() -> None:
    from engine.query.parser import MAX_DEPTH
    from engine.query.tokens import KEYWORDS

    text = section(DOC, "Lexical rules")
    listed = re.search(r"\*\*Keywords\*\* are case-insensitive: `([A-Z ]+)`", " ".join(text.split()))
    assert listed is not None and set(listed.group(1).split()) == KEYWORDS
    assert f"**{MAX_DEPTH} levels**" in text
