"""The parser preview as table-driven cases: what Fluentd's JSON parser, its `types` casts and the parser
filter (reserve_data) make of a line. Each expectation is Fluentd's behaviour as its code has it
(lib/fluent/plugin/parser_json.rb, parser.rb convert_values/build_type_converters, filter_parser.rb)."""

from __future__ import annotations

import pytest

from runbooklib.logging import preview

TYPES = {"elapsed_time": "float", "status_code": "integer", "bytes_sent": "integer"}

# (line, outcome, the records' typed fields, a note each lossy cast makes: substrings)
CASES = [
    ('{"status_code":200,"elapsed_time":0.12,"bytes_sent":512}', "parsed", [{"status_code": 200, "elapsed_time": 0.12, "bytes_sent": 512}], []),
    ('{"status_code":"503","elapsed_time":"1.52","bytes_sent":"12000"}', "parsed",
     [{"status_code": 503, "elapsed_time": 1.52, "bytes_sent": 12000}], []),  # strings cast exactly
    ('{"elapsed_time":2}', "parsed", [{"elapsed_time": 2.0}], []),  # an integer to float: to_f
    ('{"bytes_sent":12.7}', "parsed", [{"bytes_sent": 12}], ["12.7 truncated to 12"]),  # Float#to_i truncates
    ('{"status_code":"5O3"}', "parsed", [{"status_code": 5}], ['"5O3" is not an integer: Fluentd makes it 5']),  # String#to_i: leading digits
    ('{"status_code":"abc"}', "parsed", [{"status_code": 0}], ["Fluentd makes it 0"]),
    ('{"elapsed_time":"12.5s"}', "parsed", [{"elapsed_time": 12.5}], ['"12.5s" is not a number']),
    ('{"elapsed_time":"1,25"}', "parsed", [{"elapsed_time": 1.0}], ["Fluentd makes it 1.0"]),
    ('{"bytes_sent":"1_024"}', "parsed", [{"bytes_sent": 1024}], []),  # Ruby reads underscores between digits
    ('{"status_code":true}', "parsed", [{"status_code": 0}], ["true is not a number"]),  # true.to_i fails, "true".to_i is 0
    ('{"status_code":null,"bytes_sent":null}', "parsed", [{"status_code": None, "bytes_sent": None}], []),  # nil is never cast
    ('{"user":{"id":"42"},"status_code":"200"}', "parsed", [{"user": {"id": "42"}, "status_code": 200}], []),  # nested: untouched
    ('[{"status_code":"500"},{"status_code":204}]', "parsed", [{"status_code": 500}, {"status_code": 204}], []),  # one record per object
    ("GET /healthz 200", "unmatched", [], []),
    ('{"status_code":200', "unmatched", [], []),  # truncated JSON
    ('"just a string"', "unmatched", [], []),
    ("42", "unmatched", [], []),
    ('{"elapsed_time":NaN}', "unmatched", [], []),  # Ruby's JSON refuses NaN
    ('{"time":{"sec":1},"status_code":500}', "dropped", [], []),  # time_key parsed as float seconds: an object fails
    ('{"time":null,"status_code":500}', "dropped", [], []),
    ('{"time":"2026-11-28T10:00:00Z","status_code":"500"}', "parsed", [{"time": "2026-11-28T10:00:00Z", "status_code": 500}], []),
]


@pytest.mark.parametrize("line,outcome,records,notes", CASES, ids=[c[0][:40] for c in CASES])
def test_a_line_is_parsed_and_typed_as_fluentd_would(line, outcome, records, notes):
    got = preview.parse_line(line, TYPES)
    assert got.outcome == outcome, got.why
    assert [{k: r[k] for k in want} for r, want in zip(got.records, records)] == records and len(got.records) == len(records)
    for r, want in zip(got.records, records):
        for k, v in want.items():
            assert type(r[k]) is type(v), f"{k}: {r[k]!r} is {type(r[k]).__name__}, Fluentd gives {type(v).__name__}"
    assert len(got.lossy) == len(notes) and all(n in " ".join(got.lossy) for n in notes), got.lossy


@pytest.mark.parametrize("text,want", [("12abc", 12), ("abc", 0), (" 42", 42), ("-7x", -7), ("+5", 5), ("1_000", 1000), ("1__0", 1),
                                        ("0x1A", 0), ("", 0), ("3.9", 3)])
def test_ruby_string_to_i(text, want):
    assert preview.ruby_to_i(text) == want


@pytest.mark.parametrize("text,want", [("1.5s", 1.5), ("abc", 0.0), (".5", 0.5), ("1e3", 1000.0), ("1e", 1.0), ("-", 0.0),
                                        ("1_000.5", 1000.5), ("+2.5e-1x", 0.25), ("  7", 7.0), ("Infinity", 0.0)])
def test_ruby_string_to_f(text, want):
    assert preview.ruby_to_f(text) == want


@pytest.mark.parametrize("value,want", [(1.0, "1.0"), (1.52, "1.52"), (1e20, "1.0e+20"), (1.5e-05, "1.5e-05"), (True, "true"), (None, "")])
def test_ruby_to_s(value, want):
    assert preview.ruby_to_s(value) == want


@pytest.mark.parametrize("value,want", [("true", True), ("YES", True), ("1", True), ("false", False), ("no", False), ("on", False)])
def test_bool_casts_only_true_yes_1(value, want):
    assert preview.cast(value, "bool")[0] is want


def test_a_drop_in_reading_the_wrong_field_parses_nothing_and_keeps_every_record():
    lines = ['{"status_code":"500"}', "plain text", '{"status_code":200}']
    got = preview.preview(lines, TYPES, key_name="log", runtime_key="message")
    assert [p.outcome for p in got] == ["missing"] * 3
    assert preview.summary(got)["parsed"] == 0 and "`log`" in got[0].why and "`message`" in got[0].why


def test_the_sample_file_shows_every_outcome_and_documents_keep_their_line_numbers():
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "params" / "samples" / "app-logs.jsonl").read_text().splitlines()
    got = preview.preview(lines, TYPES)
    counts = preview.summary(got)
    assert counts == {"lines": 9, "parsed": 7, "unmatched": 1, "missing": 0, "dropped": 1, "lossy casts": 4}
    docs = preview.documents(got)
    assert [d["sample_line"] for d in docs] == [1, 2, 3, 4, 6, 8, 8, 9]
    rows = preview.rows(got, TYPES)
    assert rows[4]["outcome"] == "unmatched" and rows[5]["bytes_sent"] == "null"
    assert rows[1]["status_code"] == "503 (integer)" and rows[3]["notes"].startswith('elapsed_time: "12.5s" is not a number')
