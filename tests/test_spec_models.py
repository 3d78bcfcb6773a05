"""The spec's pydantic models: their schema, tagged integrators, immutability, the `linflow spec`
command, and the README's spec block checked against them."""

import json
from pathlib import Path

import pydantic
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from sweep import spec as specs
from sweep.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]


def _resolve(schema: dict, node: dict) -> list[dict]:
    """The object schemas a node may be (through $ref, anyOf and oneOf)."""
    if "$ref" in node:
        return _resolve(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in node or "oneOf" in node:
        return [o for n in node.get("anyOf", node.get("oneOf")) for o in _resolve(schema, n)]
    return [node]


def test_schema_has_every_top_level_field():
    schema = specs.json_schema()
    assert set(schema["properties"]) == set(specs.TOP_KEYS) == set(specs.DEFAULTS)
    assert schema["additionalProperties"] is False
    integrator = _resolve(schema, schema["properties"]["integrator"])
    methods = {
        m for o in integrator for m in o["properties"]["method"].get("enum", [o["properties"]["method"].get("const")])
    }
    assert methods == {"euler", "rk4", "dopri5"} and any("step" in o["properties"] for o in integrator)
    json.dumps(schema)  # plain JSON, defaults included


def test_a_bad_method_names_integrator_method():
    with pytest.raises(SpecError) as info:
        specs.parse({"integrator": {"method": "rk45"}})
    assert info.value.field == "integrator.method"
    assert "must be one of euler, rk4, dopri5" in str(info.value)


def test_fields_are_strict():
    for raw, field in (
        ({"axes": {"depth": ["3"]}}, "axes.depth[0]"),  # no text read as a number
        ({"horizon": "10"}, "horizon"),
        ({"batch": True}, "batch"),
        ({"stop_at_eps": 1}, "stop_at_eps"),
    ):
        with pytest.raises(SpecError) as info:
            specs.parse(raw)
        assert info.value.field == field, raw
    assert specs.parse({"horizon": 3}).horizon == 3.0  # an int where a float is expected, as always


def test_models_are_frozen():
    s = specs.parse({"integrator": {"method": "euler", "step": 1e-3}})
    for obj, attr, value in (
        (s, "horizon", 1.0),
        (s.integrator, "step", 1.0),
        (s.checkpoints, "count", 5),
        (s.axes, "depth", (7,)),
        (s.problem, "m", 7),
    ):
        with pytest.raises(pydantic.ValidationError):
            setattr(obj, attr, value)
    with pytest.raises(TypeError):
        s.axes["depth"] = (7,)
    assert isinstance(s.axes["depth"], tuple) and isinstance(s.axes["seed"], range)
    assert s.integrator.method == "euler" and s.integrator == {"method": "euler", "step": 1e-3}


def test_cli_spec_prints_the_normalized_spec(tmp_path):
    (tmp_path / "s.yaml").write_text("axes: {depth: [2, 3]}\nintegrator: {method: rk4, step: 0.01}\n")
    r = CliRunner().invoke(app, ["spec", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.stdout)
    assert printed == specs.load(tmp_path / "s.yaml").to_dict()
    assert printed["batch"] == specs.DEFAULTS["batch"] and printed["integrator"] == {"method": "rk4", "step": 0.01}
    assert set(printed) == set(specs.TOP_KEYS)  # every default filled in
    (tmp_path / "bad.yaml").write_text("axes: {depth: [0]}\n")
    r = CliRunner().invoke(app, ["spec", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and r.stderr == "linflow: error: axes.depth[0]: must be ≥ 1, got 0\n"


def test_cli_spec_schema_is_the_models_json_schema():
    r = CliRunner().invoke(app, ["spec", "--schema"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == specs.json_schema()


def _leaves(d: dict, path=()):
    for k, v in d.items():
        if isinstance(v, dict) and not (path == ("axes",) and "start" in v):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def test_readme_spec_block_matches_the_models():
    text = (ROOT / "README.md").read_text()
    block = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    schema = specs.json_schema()
    defaults = specs.parse({}).to_dict()
    for path, value in _leaves(block):
        nodes = [schema]
        for key in path:  # every key the README shows is a field of the models
            nodes = [o["properties"][key] for n in nodes for o in _resolve(schema, n) if key in o.get("properties", {})]
            assert nodes, f"README key {'.'.join(path)} is not in the spec's schema"
        where = defaults
        for key in path:
            where = where[key]
        assert value == where, f"README states {'.'.join(path)}: {value}, the default is {where}"


def test_flags_over_a_stored_spec_replace_the_problem_kind():
    # a store's spec (synthetic data) changed by --data, and a data-file spec changed by --m: the other kind's keys go
    synthetic = {"problem": {"m": 50, "dx": 5, "dy": 1, "seed": 0}, "horizon": 2.0}
    assert specs.merge(synthetic, {"problem": {"data": "/d.npz"}}) == {"problem": {"data": "/d.npz"}, "horizon": 2.0}
    assert specs.merge({"problem": {"data": "/d.npz"}}, {"problem": {"m": 60}}) == {"problem": {"m": 60}}
    assert specs.merge(synthetic, {"problem": {"m": 60}})["problem"] == {"m": 60, "dx": 5, "dy": 1, "seed": 0}
