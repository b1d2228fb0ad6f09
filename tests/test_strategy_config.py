"""configs/strategies.json loading: schema + per-class params, one-line errors, the validate script."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategy.ib_breakout import IBBreakout
from strategy.registry import (SCHEMA_PATH, STRATEGY_CLASSES, StrategyConfig, StrategyConfigError,
                               build, load_strategies)
from tests.conftest import ROOT

SHIPPED = ROOT / "configs" / "strategies.json"
SCRIPT = ROOT / "scripts" / "validate_strategies.py"
DEFAULTS = {"ib_minutes": 60, "stop": "ib_mid", "target_ib_multiple": 1.0,
            "max_signals_per_day": 2, "last_entry": "14:30"}


def good_doc() -> dict:
    return {"strategies": [
        {"name": "ib_breakout_nifty", "class": "ib_breakout", "enabled": True,
         "instruments": ["NSE_INDEX|Nifty 50"], "params": {"ib_minutes": 60}},
        {"name": "ib_breakout_banknifty", "class": "ib_breakout", "enabled": False,
         "instruments": ["NSE_INDEX|Nifty Bank"]},
    ]}


@pytest.fixture
def cfg_dir(tmp_path, monkeypatch):
    """A working directory holding configs/, so paths display as ``configs/strategies.json``."""
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(cfg_dir, doc_or_text) -> str:
    text = doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text, indent=2)
    (cfg_dir / "configs" / "strategies.json").write_text(text)
    return "configs/strategies.json"


def error_of(path) -> StrategyConfigError:
    with pytest.raises(StrategyConfigError) as info:
        load_strategies(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert "\n" not in str(err) and all("\n" not in line for line in err.errors)
    assert str(err).startswith(err.errors[0])
    return err


# --- the shipped file ------------------------------------------------------------------------
def test_shipped_config_validates():
    configs = load_strategies(SHIPPED)
    enabled = [c for c in configs if c.enabled]
    assert [c.name for c in enabled] == ["ib_breakout_nifty", "ib_breakout_banknifty"]
    assert [c.instruments for c in enabled] == [["NSE_INDEX|Nifty 50"], ["NSE_INDEX|Nifty Bank"]]
    assert all(c.cls_name == "ib_breakout" and c.params == DEFAULTS for c in enabled)
    # one example of every class is shipped (disabled: enable it in the file or the browser)
    assert {c.cls_name for c in configs} == set(STRATEGY_CLASSES)
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
    for cls in STRATEGY_CLASSES.values():
        jsonschema.Draft202012Validator.check_schema(cls.params_schema)


def test_defaults_filled_and_build(cfg_dir):
    nifty, bank = load_strategies(write(cfg_dir, good_doc()))
    assert nifty == StrategyConfig("ib_breakout_nifty", "ib_breakout", True, ["NSE_INDEX|Nifty 50"], DEFAULTS)
    assert bank.enabled is False and bank.params == DEFAULTS
    strat = build(nifty, lambda s: None)
    assert isinstance(strat, IBBreakout) and strat.name == "ib_breakout_nifty" and strat.params == DEFAULTS
    with pytest.raises(StrategyConfigError, match=r"known: .*\bib_breakout\b"):
        build(StrategyConfig("x", "nope", True, ["NSE_INDEX|Nifty 50"], {}), lambda s: None)


def test_empty_list_is_valid(cfg_dir):
    assert load_strategies(write(cfg_dir, {"strategies": []})) == []


# --- one-line errors naming file, strategy and field ------------------------------------------
def mutate(fn) -> dict:
    doc = copy.deepcopy(good_doc())
    fn(doc["strategies"])
    return doc


CASES = [
    ("wrong param type", lambda s: s[0]["params"].update(ib_minutes="sixty"),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params.ib_minutes: "
     "'sixty' is not of type 'integer'"),
    ("param out of range", lambda s: s[0]["params"].update(max_signals_per_day=5),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params.max_signals_per_day: "
     "5 is greater than the maximum of 2"),
    ("param enum", lambda s: s[1].update(params={"stop": "ib_low"}),
     "configs/strategies.json: strategy 'ib_breakout_banknifty': params.stop: "
     "'ib_low' is not one of ['ib_mid', 'ib_opposite']"),
    ("unknown param", lambda s: s[0]["params"].update(ib_minute=30),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params.ib_minute: unknown field "
     "(allowed: ib_minutes, last_entry, max_signals_per_day, stop, target_ib_multiple)"),
    ("cross-field param", lambda s: s[0]["params"].update(last_entry="10:00"),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params.last_entry: '10:00' must be "
     "after the IB end 10:15 (ib_minutes=60) and not after 15:30"),
    ("bad time format", lambda s: s[0]["params"].update(last_entry="2:30pm"),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params.last_entry: "
     "'2:30pm' does not match ^([01][0-9]|2[0-3]):[0-5][0-9]$"),
    ("unknown class", lambda s: s[1].update({"class": "ib_brekout"}),
     "configs/strategies.json: strategy 'ib_breakout_banknifty': class: unknown strategy class "
     "'ib_brekout' (known: eighty_percent, ib_acceptance, ib_breakout, open_drive, rule, value_fade; "
     "or \"module:ClassName\")"),
    ("bad name", lambda s: s[0].update(name="IB-Nifty"),
     "configs/strategies.json: strategy 'IB-Nifty': name: 'IB-Nifty' does not match "
     "^[a-z][a-z0-9_]{0,47}$"),
    ("duplicate name", lambda s: s[1].update(name="ib_breakout_nifty"),
     "configs/strategies.json: strategy 'ib_breakout_nifty' (#2): name: duplicate name "
     "(first used by strategy #1)"),
    ("missing field", lambda s: s[1].pop("instruments"),
     "configs/strategies.json: strategy 'ib_breakout_banknifty': instruments: required field is missing"),
    ("missing name", lambda s: s[1].pop("name"),
     "configs/strategies.json: strategy #2: name: required field is missing"),
    ("unknown field", lambda s: s[0].update(enable=True),
     "configs/strategies.json: strategy 'ib_breakout_nifty': enable: unknown field "
     "(allowed: class, enabled, heartbeat_timeout_s, instruments, name, params, warm_days)"),
    ("enabled type", lambda s: s[0].update(enabled="yes"),
     "configs/strategies.json: strategy 'ib_breakout_nifty': enabled: 'yes' is not of type 'boolean'"),
    ("empty instruments", lambda s: s[0].update(instruments=[]),
     "configs/strategies.json: strategy 'ib_breakout_nifty': instruments: [] should be non-empty"),
    ("bad instrument key", lambda s: s[0].update(instruments=["Nifty 50"]),
     "configs/strategies.json: strategy 'ib_breakout_nifty': instruments[0]: 'Nifty 50' does not "
     "match ^[A-Z][A-Z_]*\\|[^\\s|].*$"),
    ("params not an object", lambda s: s[0].update(params=[60]),
     "configs/strategies.json: strategy 'ib_breakout_nifty': params: [60] is not of type 'object'"),
    ("entry not an object", lambda s: s.append("ib_breakout"),
     "configs/strategies.json: strategy #3: entry: 'ib_breakout' is not of type 'object'"),
]


@pytest.mark.parametrize("label,fn,expected", CASES, ids=[c[0] for c in CASES])
def test_error_messages(cfg_dir, label, fn, expected):
    err = error_of(write(cfg_dir, mutate(fn)))
    assert err.errors == [expected]
    assert str(err) == expected


def test_invalid_json_names_line_and_column(cfg_dir):
    text = '{"strategies": [\n  {"name": "ib_breakout_nifty"\n    "class": "ib_breakout"}\n]}\n'
    err = error_of(write(cfg_dir, text))
    assert str(err) == "configs/strategies.json: invalid JSON at line 3 column 5: Expecting ',' delimiter"


def test_duplicate_json_key_rejected(cfg_dir):
    text = json.dumps(good_doc()).replace('"enabled": false', '"enabled": false, "enabled": true')
    assert str(error_of(write(cfg_dir, text))) == "configs/strategies.json: invalid JSON: duplicate key 'enabled'"


@pytest.mark.parametrize("doc,expected", [
    ({}, "configs/strategies.json: strategies: required field is missing"),
    ([], "configs/strategies.json: (top level): [] is not of type 'object'"),
    ({"strategies": {}}, "configs/strategies.json: strategies: {} is not of type 'array'"),
    ({"strategies": [], "x": 1}, "configs/strategies.json: x: unknown field (allowed: strategies)"),
])
def test_top_level_errors(cfg_dir, doc, expected):
    assert str(error_of(write(cfg_dir, doc))) == expected


def test_unreadable_file(cfg_dir):
    assert str(error_of("configs/missing.json")) == \
        "configs/missing.json: cannot read: No such file or directory"


def test_absolute_path_inside_cwd_is_shown_relative(cfg_dir):
    write(cfg_dir, mutate(lambda s: s[0]["params"].update(ib_minutes="sixty")))
    err = error_of(cfg_dir / "configs" / "strategies.json")
    assert str(err).startswith("configs/strategies.json: strategy 'ib_breakout_nifty': params.ib_minutes:")


def test_all_errors_collected(cfg_dir):
    def many(s):
        s[0]["params"].update(ib_minutes="sixty")
        s[1].update({"class": "nope", "name": "Bad"})
    err = error_of(write(cfg_dir, mutate(many)))
    assert len(err.errors) == 3
    assert str(err) == err.errors[0] + " (and 2 more errors)"
    assert [e.split(": ")[1] for e in err.errors] == ["strategy 'ib_breakout_nifty'", "strategy 'Bad'",
                                                     "strategy 'Bad'"]


NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcz019_-A. ", min_size=0, max_size=50))
def test_name_rule(tmp_path_factory, name):
    path = tmp_path_factory.mktemp("n") / "s.json"
    doc = good_doc()
    doc["strategies"] = doc["strategies"][:1]
    doc["strategies"][0]["name"] = name
    path.write_text(json.dumps(doc))
    if NAME_RE.fullmatch(name):
        assert [c.name for c in load_strategies(path)] == [name]
    else:
        with pytest.raises(StrategyConfigError, match=r": name: "):
            load_strategies(path)


def test_name_length_limit(cfg_dir):
    ok = "a" * 48
    assert load_strategies(write(cfg_dir, mutate(lambda s: s[0].update(name=ok))))[0].name == ok
    err = error_of(write(cfg_dir, mutate(lambda s: s[0].update(name=ok + "b"))))
    assert f"strategy '{ok}b': name: " in str(err)


# --- the script ------------------------------------------------------------------------------
def run_script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_script_ok_on_shipped_config(tmp_path):
    r = run_script(cwd=tmp_path)  # default path, run from elsewhere
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("ok: 7 strategies (ib_breakout_nifty, ib_breakout_banknifty, ib_acceptance_nifty "
                        "[disabled], eighty_percent_nifty [disabled], open_drive_nifty [disabled], "
                        "value_fade_nifty [disabled], ema_value_nifty [disabled])\n")


def test_script_reports_each_error_and_exits_1(cfg_dir):
    def many(s):
        s[0]["params"].update(ib_minutes="sixty")
        s[1].update({"class": "nope"})
    path = write(cfg_dir, mutate(many))
    r = run_script(path, cwd=cfg_dir)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "configs/strategies.json: strategy 'ib_breakout_nifty': params.ib_minutes: "
        "'sixty' is not of type 'integer'",
        "configs/strategies.json: strategy 'ib_breakout_banknifty': class: unknown strategy class "
        "'nope' (known: eighty_percent, ib_acceptance, ib_breakout, open_drive, rule, value_fade; "
     "or \"module:ClassName\")"]


def test_script_invalid_json_and_ok_path(cfg_dir):
    bad = write(cfg_dir, "{\n")
    r = run_script(bad, cwd=cfg_dir)
    assert r.returncode == 1
    assert r.stderr.startswith("configs/strategies.json: invalid JSON at line 2 column 1: ")
    good = write(cfg_dir, good_doc())
    r = run_script(good, cwd=cfg_dir)
    assert (r.returncode, r.stdout) == (0, "ok: 2 strategies (ib_breakout_nifty, "
                                           "ib_breakout_banknifty [disabled])\n")


# --- strategies of your own ("module:Class"), supervision fields -------------------------------
def test_module_class_references(cfg_dir):
    entry = {"name": "mine", "class": "tests.test_strategy_fault_classes:RaiseOnTick",
             "instruments": ["NSE_INDEX|Nifty 50"], "params": {"at": "11:00"},
             "heartbeat_timeout_s": 4, "warm_days": 2}
    [config] = load_strategies(write(cfg_dir, {"strategies": [entry]}))
    assert (config.cls_name, config.params, config.heartbeat_timeout_s, config.warm_days) == (
        entry["class"], {"at": "11:00"}, 4.0, 2)
    assert config.history_days == 2 and type(build(config, print)).__name__ == "RaiseOnTick"
    assert StrategyConfig("x", "ib_breakout").history_days == 0
    assert StrategyConfig("x", "value_fade").history_days == 10
    bad = [
        ({**entry, "class": "no_such_module_xyz:Thing"},
         "class: cannot import 'no_such_module_xyz': ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ({**entry, "class": "tests.test_strategy_fault_classes:Nothing"},
         "class: 'tests.test_strategy_fault_classes:Nothing' is not a Strategy subclass"),
        ({**entry, "class": "json:dumps"}, "class: 'json:dumps' is not a Strategy subclass"),
        ({**entry, "params": {"at": "25:00"}}, "params.at: '25:00' does not match"),
        ({**entry, "heartbeat_timeout_s": 1}, "heartbeat_timeout_s: 1 is less than the minimum of 2"),
        ({**entry, "warm_days": 31}, "warm_days: 31 is greater than the maximum of 30"),
    ]
    for e, why in bad:
        err = error_of(write(cfg_dir, {"strategies": [e]}))
        assert err.errors[0].startswith("configs/strategies.json: strategy 'mine': " + why), err.errors


def test_config_round_trips_through_the_manager_environment(cfg_dir):
    """The manager hands each process its validated entry as JSON (AMT_STRATEGY_CONFIG)."""
    from strategy.registry import parse_strategies
    for config in load_strategies(SHIPPED):
        [again] = parse_strategies(json.dumps({"strategies": [config.to_entry()]}), "AMT_STRATEGY_CONFIG")
        assert again == config
