"""The README's tables of config keys, generated from the schemas: one table per schema (the run's, the hardware's,
each algorithm's and each environment's, as marlrun/registry.py lists them), with each key's type, default and
meaning (the comment on its line in the schema, read by ``marlrun.config.schema_keys``).

    python scripts/config_tables.py           rewrite README.md between its config-tables markers
    python scripts/config_tables.py --check   exit 1 when README.md's tables differ from the schemas (CI, tests)

The tables are never edited by hand: change a schema, then run this.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

import yaml

from marlrun.config import RunConfig, schema_keys
from marlrun.hardware import HardwareConfig
from marlrun.registry import KINDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HARDWARE_PRESETS = ROOT / "conf" / "hardware"
START = "<!-- config-tables:start -->"
END = "<!-- config-tables:end -->"
COMMAND = "python scripts/config_tables.py"
GROUPS_OF_THE_RUN = ("algo", "env", "hardware")  # RunConfig's group choices: tables of their own, not keys


# --------------------------------------------------------------------------- cells
def _number(value: float) -> str:
    if value != 0 and not (1e-3 <= abs(value) < 1e6):
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(value)


def _yaml_value(value) -> str:
    """A default as it is written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _escape_tags(text: str) -> str:
    """``<`` escaped outside code spans, else Markdown reads ``<run>`` as an HTML tag and drops it."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "\\<")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: ``|`` escaped too (GitHub's tables need it inside code spans as well)."""
    return _escape_tags(text).replace("|", "\\|")


def _prose(text: str) -> str:
    """A paragraph, wrapped as the README's own."""
    return textwrap.fill(_escape_tags(text), width=120, break_long_words=False, break_on_hyphens=False)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _source(schema: type) -> str:
    return f"{schema.__module__.replace('.', '/')}.py"


def _summary(schema: type) -> str:
    """The first paragraph of the schema's docstring, on one line."""
    doc = inspect.getdoc(schema) or ""
    return " ".join(doc.split("\n\n")[0].split())


# --------------------------------------------------------------------------- tables
def _rows(schema: type, prefix: str, only: set[str] | None = None) -> list[str]:
    rows = []
    for k in schema_keys(schema):
        if schema is RunConfig and k.key in GROUPS_OF_THE_RUN:
            continue
        if dataclasses.is_dataclass(k.default):  # a nested group of keys (objective, algo.seps)
            if only is None or k.key in only:
                rows += _rows(type(k.default), f"{prefix}{k.key}.")
            continue
        if only is not None and k.key not in only:
            continue
        rows.append(f"| {_cell(_code(prefix + k.key))} | {_cell(k.type)} | {_cell(_code(_yaml_value(k.default)))} | {_cell(k.doc)} |")
    return rows


def _table(schema: type, prefix: str, only: set[str] | None = None) -> list[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(schema, prefix, only)]


def _parent(schema: type, earlier: dict[type, str]) -> tuple[type, str] | None:
    """An already tabled schema that ``schema`` extends without adding keys (MAPPOConfig: PPOConfig with another
    critic), so that its table shows only what differs."""
    names = {f.name for f in dataclasses.fields(schema)}
    for base, option in earlier.items():
        if issubclass(schema, base) and names == {f.name for f in dataclasses.fields(base)}:
            return base, option
    return None


def _differing(schema: type, base: type) -> set[str]:
    theirs = {k.key: k for k in schema_keys(base)}
    return {k.key for k in schema_keys(schema) if k != theirs[k.key]}


def _hardware_presets() -> str:
    """What each conf/hardware/ preset sets besides HardwareConfig's defaults, read from its YAML."""
    presets = []
    for path in sorted(HARDWARE_PRESETS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        keys = {k: v for k, v in data.items() if k != "defaults"}
        sets = ", ".join(f"`hardware.{k}={_yaml_value(v)}`" for k, v in keys.items()) or "nothing (the defaults)"
        presets.append(f"`hardware={path.stem}` sets {sets}")
    return "Presets: " + "; ".join(presets) + "."


def tables() -> str:
    """Every table, as the README holds it between its markers."""
    out = [
        f"<!-- Generated by `{COMMAND}` from the schemas (marlrun/config.py, marlrun/hardware.py and those\n"
        "marlrun/registry.py lists): edit a schema's comments, then run it. -->",
        "",
        f"#### The run (top-level keys): `RunConfig`, {_source(RunConfig)}",
        "",
        _prose(_summary(RunConfig)),
        "",
        *_table(RunConfig, ""),
        "",
        f"#### `hardware.*`: `HardwareConfig`, {_source(HardwareConfig)}",
        "",
        _prose(_summary(HardwareConfig)),
        "",
        *_table(HardwareConfig, "hardware."),
        "",
        _prose(_hardware_presets()),
    ]
    for group, entries in KINDS.items():
        earlier: dict[type, str] = {}
        for option, e in entries.items():
            schema = e.config
            out += ["", f"#### `{group}={option}`: `{schema.__name__}`, {_source(schema)}", "", _prose(_summary(schema)), ""]
            parent = _parent(schema, earlier)
            if parent:
                base, base_option = parent
                out += [f"Every key as `{group}={base_option}` ({base.__name__}), except:", ""]
                out += _table(schema, f"{group}.", _differing(schema, base))
            else:
                out += _table(schema, f"{group}.")
                earlier[schema] = option
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the README
def rewrite(text: str, generated: str) -> str:
    """``text`` with everything between its markers replaced by ``generated``; ValueError without one pair."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one '{START}' line and one '{END}' line after it, in its Configuration section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate README.md's config key tables from the schemas.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's tables are stale, write nothing")
    parser.add_argument("--readme", type=Path, default=README, help="the file to rewrite or check (default: README.md)")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        new = rewrite(text, tables())
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"{args.readme.name}: the config key tables differ from the schemas; run `{COMMAND}` and commit the result",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"{args.readme.name}: config key tables rewritten")
    else:
        print(f"{args.readme.name}: config key tables already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
