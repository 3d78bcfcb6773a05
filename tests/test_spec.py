"""Spec validation: defaults, normalization, fingerprints, and one named field per bad input."""

import math

import numpy as np
import pytest
import yaml

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
