"""Config keys are documented once and their defaults stated once: in the dataclass schemas.

The README's key tables are generated from the schemas (scripts/config_tables.py) and must be current; every key of
every schema has a documentation comment; the YAML files under conf/ set no default a schema states (a preset under
conf/experiment/ may set anything); and no function signature under marlrun/ restates a schema's default under the
key's name. Each check is also run on a broken input, so that it is known to be able to fail.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from marlrun.config import RunConfig, schema_keys
from marlrun.hardware import HardwareConfig
from marlrun.registry import ALGORITHMS, ENVIRONMENTS, KINDS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "config_tables.py"
CONF = ROOT / "conf"
PACKAGE = ROOT / "marlrun"


def _load_script():
    spec = importlib.util.spec_from_file_location("config_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_tables = _load_script()


# --------------------------------------------------------------------------- the README's tables
def test_the_readme_tables_are_current(capsys):
    code = config_tables.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_the_check_fails_on_a_stale_readme_and_the_script_mends_it(tmp_path):
    readme = tmp_path / "README.md"
    text = config_tables.rewrite((ROOT / "README.md").read_text(), config_tables.tables())  # current, whatever README.md is
    window = ALGORITHMS["super_ddqn"].config().window
    row = f"| `algo.window` | int | `{window}` |"
    assert row in text
    readme.write_text(text.replace(row, f"| `algo.window` | int | `{window + 1}` |"))
    stale = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True, text=True,
                           timeout=300)
    assert stale.returncode == 1
    assert stale.stderr.count("\n") == 1 and "python scripts/config_tables.py" in stale.stderr, stale.stderr
    assert "Traceback" not in stale.stderr

    assert config_tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == text
    assert config_tables.main(["--check", "--readme", str(readme)]) == 0


def test_the_check_fails_without_the_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().replace(config_tables.END, ""))
    assert config_tables.main(["--check", "--readme", str(readme)]) == 1
    assert config_tables.END in capsys.readouterr().err


def test_the_tables_hold_every_key_of_every_schema():
    tables = config_tables.tables()
    expected = [f"`{k.key}`" for k in schema_keys(RunConfig) if k.key not in ("algo", "env", "hardware", "objective")]
    expected += [f"`objective.{k.key}`" for k in schema_keys(type(RunConfig().objective))]
    expected += [f"`hardware.{k.key}`" for k in schema_keys(HardwareConfig)]
    for group, entries in KINDS.items():
        for name, e in entries.items():
            heading = f"#### `{group}={name}`: `{e.config.__name__}`"
            assert heading in tables
            section = tables.split(heading, 1)[1].split("\n#### ", 1)[0]
            if "Every key as" in section:  # a schema that only changes defaults of another (mappo: ippo's)
                continue
            for k in schema_keys(e.config):
                if dataclasses.is_dataclass(k.default):  # a nested group (algo.seps): each of its keys
                    for nested in schema_keys(type(k.default)):
                        assert f"| `{group}.{k.key}.{nested.key}` |" in section, (group, name, k.key, nested.key)
                    continue
                assert f"| `{group}.{k.key}` |" in section, (group, name, k.key)
    for key in expected:
        assert f"| {key} |" in tables, key


# --------------------------------------------------------------------------- every key documented
def _schemas() -> dict[str, type]:
    """Every schema: the run's and those nested in it (objective), the hardware's, each algorithm's and environment's."""
    found = {"RunConfig": RunConfig, "HardwareConfig": HardwareConfig}
    for group, entries in KINDS.items():
        for name, e in entries.items():
            found[f"{group}={name}"] = e.config
    for schema in list(found.values()):
        for f in dataclasses.fields(schema):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(value := f.default_factory()):
                found[type(value).__name__] = type(value)
    return found


SCHEMAS = _schemas()


def undocumented(schema: type) -> list[str]:
    """The keys of ``schema`` without a documentation comment, and its fields ``schema_keys`` does not list."""
    keys = schema_keys(schema)
    missing = [k.key for k in keys if not k.doc.strip()]
    listed = {k.key for k in keys}
    missing += [f"{f.name} (not listed)" for f in dataclasses.fields(schema) if f.name != "name" and f.name not in listed]
    return missing


def test_the_schemas_include_the_nested_ones():
    assert "ObjectiveConfig" in SCHEMAS and "SePSConfig" in SCHEMAS and len(SCHEMAS) == 4 + len(ALGORITHMS) + len(ENVIRONMENTS)


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_every_key_has_a_documentation_comment(schema):
    assert undocumented(schema) == []


@dataclasses.dataclass
class _HalfDocumented:
    name: str = "half"
    documented: int = 1  # what it does
    bare: float = 0.5
    empty: bool = True  #


def test_the_documentation_check_finds_an_undocumented_key():
    assert undocumented(_HalfDocumented) == ["bare", "empty"]


# --------------------------------------------------------------------------- defaults stated once: conf/
def keys_set(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def set_in_group_yamls(folder: Path) -> dict[str, list[str]]:
    """For each YAML in ``folder`` (conf/algo, conf/env): the keys it sets besides its defaults list."""
    return {p.name: [k for k in keys_set(p) if k != "defaults"] for p in sorted(folder.glob("*.yaml"))}


@pytest.mark.parametrize("group", ["algo", "env"])
def test_algo_and_env_yamls_set_no_key(group):
    """The YAML named after a registered algorithm or environment sets nothing: its defaults are its schema's."""
    assert {name: keys for name, keys in set_in_group_yamls(CONF / group).items() if keys and name[:-5] in KINDS[group]} == {}


@pytest.mark.parametrize("group", ["algo", "env"])
def test_each_algo_and_env_yaml_names_its_schema_and_the_registry_lists_it(group):
    yamls = sorted(p for p in CONF.joinpath(group).glob("*.yaml") if p.stem in KINDS[group])
    assert sorted(p.stem for p in yamls) == sorted(KINDS[group])
    for path in yamls:
        assert f"/schema/{group}/{path.stem}@_here_" in keys_set(path)["defaults"], path


def presets(group: str) -> list[Path]:
    return sorted(p for p in CONF.joinpath(group).glob("*.yaml") if p.stem not in KINDS[group])


@pytest.mark.parametrize("path", presets("env") + presets("algo"), ids=lambda p: p.stem)
def test_a_group_preset_names_a_registered_schema_and_sets_only_its_keys_away_from_their_defaults(path):
    """A preset in conf/env or conf/algo (env=pursuit_small) is a registered schema with some keys changed."""
    group = path.parent.name
    named = [d.split("/")[3].split("@")[0] for d in keys_set(path)["defaults"] if isinstance(d, str) and d.startswith(f"/schema/{group}/")]
    assert len(named) == 1 and named[0] in KINDS[group], path
    schema = KINDS[group][named[0]].config()
    for key, value in keys_set(path).items():
        if key != "defaults":
            assert hasattr(schema, key), f"{path}: {key} is not a key of {type(schema).__name__}"
            assert getattr(schema, key) != value, f"{path}: {key}={value} is the schema's default"


def test_the_yaml_check_finds_a_key_set(tmp_path):
    (tmp_path / "qmix.yaml").write_text("# QMIX\ndefaults:\n  - /schema/algo/qmix@_here_\n  - _self_\n")
    (tmp_path / "super_ddqn.yaml").write_text("defaults:\n  - /schema/algo/super_ddqn@_here_\n  - _self_\n\nwindow: 1500\n")
    assert set_in_group_yamls(tmp_path) == {"qmix.yaml": [], "super_ddqn.yaml": ["window"]}


def test_config_yaml_sets_no_run_level_key():
    assert set(keys_set(CONF / "config.yaml")) <= {"defaults", "hydra"}


def hardware_restated(path: Path) -> list[str]:
    """Keys a hardware preset sets that are not HardwareConfig's, or to HardwareConfig's own default."""
    defaults = {k.key: k.default for k in schema_keys(HardwareConfig)}
    return [f"{key}={value}" for key, value in keys_set(path).items()
            if key != "defaults" and (key not in defaults or value == defaults[key])]


@pytest.mark.parametrize("path", sorted((CONF / "hardware").glob("*.yaml")), ids=lambda p: p.name)
def test_hardware_presets_set_only_what_differs_from_the_schema(path):
    assert hardware_restated(path) == []


def test_the_hardware_check_finds_a_restated_default(tmp_path):
    preset = tmp_path / "cuda.yaml"
    preset.write_text((CONF / "hardware" / "cuda.yaml").read_text() + "precision: auto\n")
    assert hardware_restated(preset) == ["precision=auto"]


# --------------------------------------------------------------------------- defaults stated once: signatures
def _algo_env_defaults() -> dict[str, list[tuple[str, object]]]:
    """key -> [(schema, default)] over every algorithm's and environment's schema."""
    found: dict[str, list[tuple[str, object]]] = {}
    for entries in KINDS.values():
        for e in entries.values():
            for k in schema_keys(e.config):
                found.setdefault(k.key, []).append((e.config.__name__, k.default))
    return found


KEY_DEFAULTS = _algo_env_defaults()


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def _functions(tree: ast.AST):
    """(qualified name, node) of every function and lambda in ``tree``: ``Class.method``, ``outer.inner``."""
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(child, ast.ClassDef):
                    yield f"{prefix}{child.name}", child
                stack.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, ast.Lambda):
                yield f"{prefix}<lambda>", child
                stack.append((child, prefix))
            else:
                stack.append((child, prefix))


def restated_defaults(source: str, where: str) -> list[str]:
    """``where:LINE function(parameter=default) restates Schema.key`` for each parameter of a function in ``source``
    that has the name of an algorithm's or environment's config key and that key's schema default as its default."""
    found = []
    for name, node in _functions(ast.parse(source)):
        args = node.args
        positional = args.posonlyargs + args.args
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(arg, d) for arg, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for arg, default in pairs:
            if arg.arg not in KEY_DEFAULTS:
                continue
            try:
                value = ast.literal_eval(default)
            except ValueError:  # not a literal: not a restated default
                continue
            schemas = [schema for schema, schema_default in KEY_DEFAULTS[arg.arg] if _same(value, schema_default)]
            if schemas:
                found.append((arg.lineno, f"{where}:{arg.lineno} {name}({arg.arg}={value!r}) restates "
                                          f"{', '.join(f'{s}.{arg.arg}' for s in schemas)}'s default"))
    return [text for _, text in sorted(found)]


def _signature_findings() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += restated_defaults(path.read_text(), path.relative_to(ROOT).as_posix())
    return found


def test_no_signature_restates_a_schema_default():
    findings = _signature_findings()
    assert findings == [], "function signatures restate a schema's default (take the config's value instead):\n" + "\n".join(findings)


def test_the_signature_check_finds_a_restated_default():
    window = ALGORITHMS["super_ddqn"].config().window
    source = f"""
class Sharing:
    def make_heuristic(self, name, n_agents, beta=0.123, window={window}, device='cpu'):
        pass

def unrelated(window={window + 1}, prioritized=1, lr=None):
    pass
"""
    assert restated_defaults(source, "sharing.py") == [
        f"sharing.py:3 Sharing.make_heuristic(window={window}) restates SuperDDQNConfig.window's default"]
