"""Spec validation: defaults, normalization, fingerprints, and one named field per bad input."""

import math

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sweep import spec as specs
from sweep.spec import SpecError


def test_defaults_make_a_valid_sweep():
    s = specs.parse({})
    assert list(s.axes) == ["depth", "width", "init_norm", "seed"]
    assert s.axes["seed"] == range(8)  # a range stays one
    assert s.integrator == {"method": "dopri5", "rtol": 1e-8, "atol": 1e-12, "max_steps": specs.MAX_STEPS}


def test_every_default_applies_whenever_its_key_is_missing():
    full = specs.parse({}).to_dict()
    # a missing tolerance, the method alone, or a flag alone take the defaults of the rest (issue 8 item 5)
    for raw in (
        {"integrator": {"method": "dopri5"}},
        {"integrator": {}},
        {"integrator": {"rtol": 1e-8}},
        {"checkpoints": {}},
        {"init": {}},
        {"problem": {}},
        {"checkpoints": {"spacing": "log"}},
    ):
        assert specs.parse(raw).to_dict() == full, raw
    assert specs.load(None, {"integrator": {"rtol": 1e-6}}).integrator == {
        "method": "dopri5",
        "rtol": 1e-6,
        "atol": 1e-12,
        "max_steps": specs.MAX_STEPS,
    }
    assert specs.load(None, {"integrator": {"method": "dopri5"}}).integrator == specs.parse({}).integrator
    spec = specs.load(None, {"integrator": {"method": "euler", "step": 1e-3}})
    assert specs.merge(spec.to_dict(), {"integrator": {"method": "dopri5"}})["integrator"] == {"method": "dopri5"}
    # each top-level key left out gives the default value
    for key in specs.DEFAULTS:
        raw = {k: v for k, v in full.items() if k != key}
        assert specs.parse(raw).to_dict() == full, key


def test_the_readme_spec_block_is_the_defaults():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    readme = specs.parse(yaml.safe_load(block)).to_dict()
    readme["axes"]["init_norm"] = list(specs.DEFAULTS["axes"]["init_norm"])  # the README shows a sweep of it
    assert readme == specs.parse({}).to_dict()


def test_issue_example_spec_parses_and_round_trips():
    raw = yaml.safe_load("""
problem: {m: 50, dx: 5, dy: 1, seed: 0}
model: layerwise
init: {scheme: balanced}
axes:
  depth: [1, 2, 3, 4]
  width: [5]
  init_norm: [0.1, 1.0, 10.0]
  seed: {start: 0, stop: 8}
  init_angle: [0.0, 1.5, 3.1]
integrator: {method: dopri5, rtol: 1.0e-8, atol: 1.0e-12}
horizon: 10.0
eps: 1.0e-6
stop_at_eps: false
checkpoints: {count: 101, spacing: log}
batch: 256
""")
    s = specs.parse(raw)
    assert list(s.axes) == ["depth", "width", "init_norm", "init_angle", "seed"]  # canonical order
    assert s.shape == (4, 1, 3, 3, 8)
    again = specs.parse(yaml.safe_load(s.to_yaml()))
    assert again == s and again.fingerprint() == s.fingerprint()
    t = s.checkpoint_times()
    assert len(t) == 101 and t[0] == 0 and t[-1] == 10.0 and np.all(np.diff(t) > 0)


def test_fingerprint_ignores_batch_but_not_science():
    a = specs.parse({"batch": 7})
    assert a.fingerprint() == specs.parse({"batch": 64}).fingerprint()
    assert a.fingerprint() != specs.parse({"eps": 1e-5}).fingerprint()
    assert a.fingerprint() != specs.parse({"batch": 7}).fingerprint("other data")


def test_flags_override_and_switch_method():
    raw = {"integrator": {"method": "dopri5", "rtol": 1e-8, "atol": 1e-12}, "axes": {"depth": [1]}}
    merged = specs.merge(raw, {"integrator": {"method": "euler", "step": 1e-6}, "axes": {"depth": [2, 3]}})
    s = specs.parse(merged)
    assert s.integrator == {"method": "euler", "step": 1e-6}
    assert s.axes["depth"] == (2, 3)
    assert specs.parse_list("0:5", "--seed", int) == range(5)
    assert specs.parse_list("0.1,1,10", "--init-norm") == [0.1, 1.0, 10.0]


BAD = [
    ({"depht": [1]}, "depht", "unknown key"),
    ({"axes": {"depth": [0, 1]}}, "axes.depth[0]", "≥ 1"),
    ({"axes": {"depth": ["two"]}}, "axes.depth[0]", "integer"),
    ({"axes": {"width": [0]}}, "axes.width[0]", "≥ 1"),
    ({"axes": {"init_norm": [1.0, -0.5]}}, "axes.init_norm[1]", "> 0"),
    ({"axes": {"init_norm": [0]}}, "axes.init_norm[0]", "> 0"),
    ({"axes": {"seed": []}}, "axes.seed", "empty"),
    ({"axes": {"seed": {"start": 3, "stop": 3}}}, "axes.seed", "empty"),
    ({"axes": {"depth": [2, 2]}}, "axes.depth", "twice"),
    ({"axes": {"sed": [1]}}, "axes.sed", "unknown key"),
    ({"integrator": {"method": "euler", "step": -1e-3}}, "integrator.step", "> 0"),
    ({"integrator": {"method": "euler"}}, "integrator.step", "needs a fixed step"),
    ({"integrator": {"method": "dopri5", "atol": -1e-8}}, "integrator.atol", "> 0"),
    ({"integrator": {"method": "rk45", "rtol": 1e-8}}, "integrator.method", "one of"),
    ({"integrator": {"method": "rk4", "step": 0.1, "rtol": 1e-3}}, "integrator.rtol", "not used"),
    ({"problem": {"m": 3, "dx": 5}}, "problem.m", "m ≥ dx"),
    ({"problem": {"dy": 0}}, "problem.dy", "≥ 1"),
    ({"model": "end-to-end"}, "model", "one of"),
    ({"model": "induced", "init": {"scheme": "gaussian"}}, "model", "balanced"),
    ({"horizon": "long"}, "horizon", "number"),
    ({"horizon": math.inf}, "horizon", "finite"),
    ({"stop_at_eps": "yes"}, "stop_at_eps", "true or false"),
    ({"checkpoints": {"count": 1}}, "checkpoints.count", "≥ 2"),
    ({"batch": 0}, "batch", "≥ 1"),
    ({"batch": 10**7}, "batch", "≤ 65536"),
    ({"axes": {"init_angle": [0.5]}, "problem": {"dy": 3}}, "axes.init_angle", "dy = 1"),
    ({"axes": {"init_angle": [0.5]}, "init": {"scheme": "gaussian"}}, "axes.init_angle", "balanced"),
    ({"axes": {"init_angle": [4.0]}}, "axes.init_angle[0]", "≤ 3.14159"),
]


@pytest.mark.parametrize("raw, field, words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_spec_names_the_field(raw, field, words):
    with pytest.raises(SpecError) as info:
        specs.parse(raw)
    assert info.value.field == field
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_flag_lists_name_the_flag():
    with pytest.raises(SpecError, match="--depth"):
        specs.parse_list("2,x", "--depth", int)
    with pytest.raises(SpecError, match="--seed"):
        specs.parse_list("0:1:2:3", "--seed", int)


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("axes:\n  depth: [1, 2\n  width: [5]\n")
    with pytest.raises(SpecError, match="malformed YAML.*line"):
        specs.load(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        specs.load(p)


# --------------------------------------------------------------------------------------------------
# YAML: the core schema of YAML 1.2, a key once per mapping, and what to_yaml writes read back the same
# --------------------------------------------------------------------------------------------------


def read(tmp_path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return specs.read_yaml(p)


CORE = [
    ("1:20", "1:20"),  # YAML 1.1: base 60, 80
    ("-1:20", "-1:20"),
    ("010", 10),  # YAML 1.1: octal, 8
    ("0o17", 15),
    ("0x1f", 31),
    ("+12", 12),
    ("1_000", "1_000"),  # YAML 1.1: 1000
    ("1e3", 1000.0),  # YAML 1.1: a string
    ("1.0e3", 1000.0),
    ("-.5", -0.5),
    ("1.", 1.0),
    (".inf", math.inf),
    ("-.Inf", -math.inf),
    ("~", None),
    ("null", None),
    ("NULL", None),
    ("", None),
    ("true", True),
    ("False", False),
    ("TRUE", True),
    ("yes", "yes"),  # YAML 1.1: true
    ("no", "no"),
    ("on", "on"),
    ("Off", "Off"),
    ("y", "y"),
    ("2001-12-14", "2001-12-14"),  # YAML 1.1: a date
    ("'010'", "010"),
    ("!!int 0x10", 16),
    ("!!float 1", 1.0),
]


@pytest.mark.parametrize("text, value", CORE, ids=[c[0] or "empty" for c in CORE])
def test_yaml_scalars_are_read_by_the_core_schema_of_yaml_1_2(tmp_path, text, value):
    got = read(tmp_path, f"a: {text}\n")["a"]
    assert got == value and type(got) is type(value), (text, got)


def test_yaml_nan_is_a_float(tmp_path):
    assert all(math.isnan(read(tmp_path, f"a: {t}\n")["a"]) for t in (".nan", ".NaN", ".NAN"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: !!int 1:20\n", "at line 1, column 4: '1:20' is not a YAML 1.2 int"),
        ("a: !!float 1:20\n", "'1:20' is not a YAML 1.2 float"),
        ("a: !!bool yes\n", "'yes' is not a YAML 1.2 bool"),
        ("a: " + "1" * 5000 + "\n", "an integer of 5,000 digits"),
    ],
)
def test_yaml_explicit_tags_follow_the_core_schema_too(tmp_path, text, words):
    with pytest.raises(SpecError, match="spec: malformed YAML in .*") as info:
        read(tmp_path, text)
    assert words in str(info.value) and info.value.field == "spec"


DUPLICATES = [
    ("horizon: 1.0\nhorizon: 2.0\n", "duplicate key horizon (lines 1 and 2)"),
    ("axes:\n  depth: [1]\n  seed: [0]\n  width: [5]\n  seed: [1]\n", "duplicate key axes.seed (lines 3 and 5)"),
    ("axes: {seed: [0], seed: [1]}\n", "duplicate key axes.seed (twice on line 1)"),
    ("integrator:\n  method: euler\n  step: 0.1\n  step: 0.2\n", "duplicate key integrator.step (lines 3 and 4)"),
    ("a:\n  - {b: 1}\n  - {b: 1, c: 2, c: 3}\n", "duplicate key a[1].c (twice on line 3)"),
    ("d: &d {x: 1}\ne: {<<: *d, <<: *d}\n", "duplicate key e.<< (twice on line 2)"),
]


@pytest.mark.parametrize("text, words", DUPLICATES, ids=[w for _, w in DUPLICATES])
def test_yaml_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path, text, words):
    with pytest.raises(SpecError) as info:
        read(tmp_path, text)
    assert info.value.field == "spec" and str(info.value).endswith(f"in {tmp_path / 'spec.yaml'}: {words}")


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "base: &b {method: euler, step: 0.1}\nintegrator: {<<: *b, step: 0.2}\n"
    assert read(tmp_path, text)["integrator"] == {"method": "euler", "step": 0.2}


def test_an_integer_axis_written_a_colon_b_is_the_range_of_its_flag(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("axes:\n  depth: 1:4\n  seed: 1:20\n")
    s = specs.load(p)
    assert s.axes["seed"] == range(1, 20) and s.axes["depth"] == range(1, 4)
    flags = specs.load(None, {"axes": {"seed": specs.parse_list("1:20", "--seed", int), "depth": [1, 2, 3]}})
    assert flags.fingerprint() == s.fingerprint()
    assert specs.parse({"axes": {"seed": "9:0:-3"}}).axes["seed"] == (9, 6, 3)  # as --seed 9:0:-3
    with pytest.raises(SpecError) as info:  # in a list: an error naming the value, never the number 80
        specs.parse({"axes": {"seed": ["1:20"]}})
    assert info.value.field == "axes.seed[0]" and "a range is a whole axis, without brackets" in str(info.value)
    with pytest.raises(SpecError) as info:  # a float axis has no ranges
        specs.parse({"axes": {"init_norm": "1:3"}})
    assert info.value.field == "axes.init_norm[0]" and "expected a number, got '1:3'" in str(info.value)
    with pytest.raises(SpecError, match="axes: the grid has 20,000,000 cells"):  # counted before it is built
        specs.parse({"axes": {"depth": "1:1001", "seed": "0:20000"}})


TRICKY = ["1:20", "yes", "010", "0o17", "0x1F", "1e3", "-.5", "1_000", ".inf", "~", "", "null", "True", "<<", "="]


def dump(data) -> str:
    return yaml.dump(data, Dumper=specs._Dumper)


@pytest.mark.parametrize("text", TRICKY)
def test_strings_that_look_like_numbers_round_trip_through_to_yaml(tmp_path, text):
    raw = {"model": text, "axes": {"seed": [text]}, text: 1}
    assert read(tmp_path, dump(raw)) == raw  # YAML 1.2: read_yaml, spec files
    assert yaml.safe_load(dump(raw)) == raw  # YAML 1.1: the stored spec's readers (store.stored_spec)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.sampled_from(TRICKY),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text() | st.sampled_from(TRICKY), inner),
        max_leaves=12,
    )
)
def test_what_to_yaml_writes_reads_back_the_same_by_yaml_1_2_and_1_1(data):
    text = dump({"a": data})
    assert yaml.load(text, Loader=specs._BoundedLoader) == {"a": data} == yaml.safe_load(text)


def test_a_spec_round_trips_through_its_yaml(tmp_path):
    for raw in (
        {},
        {"axes": {"init_angle": [0.0, 1.5], "seed": {"start": 3, "stop": 20, "step": 2}}, "horizon": 1e3},
        {"integrator": {"method": "euler", "step": 1e-3}, "eps": 1e-12, "checkpoints": {"count": 3, "log_start": 0.5}},
    ):
        s = specs.parse(raw)
        for again in (specs.parse(read(tmp_path, s.to_yaml())), specs.parse(yaml.safe_load(s.to_yaml()))):
            assert again == s and again.fingerprint() == s.fingerprint() and again.to_yaml() == s.to_yaml()


def test_negative_zero_is_zero_in_the_spec_and_its_fingerprint(tmp_path):
    minus = specs.parse({"axes": {"init_angle": [-0.0, 1.0]}})
    plus = specs.parse({"axes": {"init_angle": [0.0, 1.0]}})
    assert not np.signbit(minus.axes["init_angle"][0]) and not np.signbit(minus.values("init_angle")[0])
    assert minus.fingerprint() == plus.fingerprint() and minus.to_yaml() == plus.to_yaml()
    assert specs.load(None, {"axes": {"init_angle": specs.parse_list("-0.0,1.0", "--init-angle")}}) == plus
    p = tmp_path / "spec.yaml"
    p.write_text("axes: {init_angle: [-0.0, 1.0]}\n")
    assert specs.load(p).fingerprint() == plus.fingerprint()
    assert "-0.0" not in minus.to_yaml()
