"""YAML → plain data with `${VAR}` substitution, duplicate-key errors and a line for every key path."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from costguard.errors import ConfigError

__all__ = ["load_yaml"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Values a config may expand to. Aliases repeat a node without repeating its text, so a few hundred
# bytes can name billions of values (a "billion laughs" bomb); real configs hold hundreds.
MAX_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `on: [kill]` and `country: no` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    def __init__(self, file: str, env: dict[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.loader = _Loader("")
        self.values = 0

    def error(self, parts: list[str | int], node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(f"{message} (line {node.start_mark.line + 1})", file=self.file, path=_path(parts) or None)

    def build(self, node: yaml.Node, parts: list[str | int]) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.error(
                parts,
                node,
                f"the config expands to more than {MAX_VALUES:,} values: aliases (*name) repeating large "
                "nodes? A costguard config needs far fewer",
            )
        self.lines[_path(parts)] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            self.loader.flatten_mapping(node)  # merge keys (<<)
            for key_node, value_node in node.value:
                key = self.build(key_node, [*parts, "<key>"])
                if not isinstance(key, str):
                    shown = type(key).__name__ if isinstance(key, int) else repr(key)
                    raise self.error(parts, key_node, f"keys must be strings, got {shown} {key_node.value[:40]!r}")
                if key in out:
                    raise self.error([*parts, key], key_node, f"duplicate key {key!r}")
                out[key] = self.build(value_node, [*parts, key])
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, [*parts, i]) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if "${" in node.value:
            return self.substitute(node, parts)
        return self.construct(node, parts)

    def construct(self, node: yaml.ScalarNode, parts: list[str | int]) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as exc:
            # PyYAML's constructors of dates (2026-13-01), explicit tags (!!int abc) and numbers too long
            # for Python raise plain errors.
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "…"
            raise self.error(parts, node, f"cannot read the value {shown!r}: {exc}") from None

    def substitute(self, node: yaml.ScalarNode, parts: list[str | int]) -> Any:
        def value_of(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                raise self.error(parts, node, f"environment variable {name} is not set (used as ${{{name}}})")
            return self.env[name]

        text = _VAR.sub(value_of, node.value)
        if node.style is not None:  # quoted: always a string
            return text
        # Unquoted: `monthly_usd: ${BUDGET}` becomes a number when the variable holds one.
        tag = self.loader.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return self.construct(yaml.ScalarNode(tag, text, node.start_mark, node.end_mark), parts)


def _yaml_error(exc: yaml.MarkedYAMLError, text: str) -> str:
    """PyYAML's error as one line: where (line and column), what, and how to fix it — never the text of the line."""
    mark = exc.problem_mark or exc.context_mark
    line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = (exc.problem or exc.context or "cannot be parsed").strip()
    if "${" in line and "{" in line.split("${", 1)[0]:
        hint = '`${VAR}` inside `{ }` reads as a nested mapping: quote it ("${VAR}") or write the block on lines'
    elif "alias" in str(exc.context) or "anchor" in str(exc.context):
        hint = '`*` and `&` start YAML aliases and anchors: quote the key or value ("*")'
    elif "expected <block end>" in what or "mapping values are not allowed" in what:
        hint = "check the indentation of this line against the lines above it (spaces only, the same step)"
    elif "\t" in line:
        hint = "YAML indents with spaces, not tabs"
    else:
        hint = "check the quoting and indentation around it"
    # The line itself is not quoted: a config line may hold a token or a webhook URL.
    return f"not valid YAML{where}: {what}; {hint}"


def load_yaml(text: str, file: str, env: dict[str, str] | None = None) -> tuple[Any, dict[str, int]]:
    """Parse YAML text; returns the data and a map from key path to line number."""
    builder = _Builder(file, dict(os.environ) if env is None else env)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_error(exc, text), file=file) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    if node is None:
        return {}, {}
    try:
        return builder.build(node, []), builder.lines
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"cannot read value: {exc}", file=file) from None
    except RecursionError:
        raise ConfigError("cannot read value: an alias refers to a node that contains it", file=file) from None
