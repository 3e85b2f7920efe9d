"""Load a YAML file into a pydantic model once, at the edge, with errors that name file, line and key.

pydantic validates; PyYAML's node tree knows where every key sits. This module joins the two so a
user reads ``devices/lab.yaml:12: devices[1].port: Input should be a valid integer (got 'twenty-two');
fix: ...`` and no traceback. Unknown keys are errors, never warnings (STYLE.md rule 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node along ``loc`` that exists in the YAML tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    # An unknown key is reported at the key itself.
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _fix_for(err: Any) -> str:
    """How to fix one pydantic error, from its type and the limits in its context."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    fixed = {
        "extra_forbidden": "remove it, or check its spelling against the documented keys",
        "missing": "add this key",
        "int_parsing": "write a whole number, without quotes",
        "int_type": "write a whole number, without quotes",
        "int_from_float": "write a whole number, without a fraction",
        "float_parsing": "write a number, without quotes",
        "float_type": "write a number, without quotes",
        "bool_parsing": "write true or false",
        "bool_type": "write true or false",
        "string_type": "write text (quote it if YAML reads it as a number or a boolean)",
        "dict_type": "write a mapping of key: value lines",
        "model_type": "write a mapping of key: value lines",
        "tuple_type": "write a list, e.g. [a, b]",
        "list_type": "write a list, e.g. [a, b]",
    }
    if kind in fixed:
        return fixed[kind]
    limits = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if kind in limits and limits[kind][0] in ctx:
        key, op = limits[kind]
        limit = ctx[key]
        return f"use a value {op} {limit:g}" if isinstance(limit, (int, float)) else f"use a value {op} {limit}"
    if kind == "literal_error" and "expected" in ctx:
        return f"use one of: {ctx['expected']}"
    if kind == "too_short" and "min_length" in ctx:
        return f"give at least {ctx['min_length']} item(s)"
    if kind == "too_long" and "max_length" in ctx:
        return f"give at most {ctx['max_length']} item(s)"
    if kind == "string_pattern_mismatch" and "pattern" in ctx:
        return f"use only the characters the pattern {ctx['pattern']} allows"
    return "compare it with the example files under devices/ and models/"


def _message_for(err: Any) -> str:
    """The error's own words, without pydantic's "Value error, " prefix, with the bad value if it is short."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = err.get("input")
    # Quote scalars only: a whole mapping in the message would bury the point.
    if err["type"] != "missing" and isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 80:
        message += f" (got {value!r})"
    return message


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return the plain data and the node tree (for line numbers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path, fix="check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"not valid YAML: {exc.problem}", file=path, line=line, fix="fix the syntax") from None
    return data, node


def validate(
    model: type[M], data: Any, *, path: Path, node: yaml.Node | None, context: dict[str, Any] | None = None
) -> M:
    """Validate data against a model; the first error becomes a ConfigError with file, line and key.

    A validator may point below its own location with ``at`` in its error context (a model-level check
    that two devices share a name reports the second one's ``name``) and give its own ``fix``.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        ctx = err.get("ctx") or {}
        loc = tuple(err["loc"]) + tuple(ctx.get("at", ()))
        # An invalid item also makes its container fail (a too-short tuple after the bad device
        # is dropped): those echoes sit on a prefix of the first error's location and are not news.
        others = [e for e in errors[1:] if tuple(e["loc"]) != tuple(err["loc"])[: len(e["loc"])]]
        more = f" (and {len(others)} more)" if others else ""
        raise ConfigError(
            _message_for(err) + more,
            file=path,
            line=line_of(node, loc),
            key=_key_path(loc),
            fix=ctx.get("fix") or _fix_for(err),
        ) from None


def load_document(model: type[M], path: Path, *, context: dict[str, Any] | None = None) -> tuple[M, yaml.Node | None]:
    """Read and validate one YAML file; return the frozen model and the node tree (for later line numbers)."""
    data, node = read_yaml(path)
    if data is None:
        raise ConfigError("file is empty", file=path, fix="see the examples in the repository")
    return validate(model, data, path=path, node=node, context=context), node


def load_model(model: type[M], path: Path, *, context: dict[str, Any] | None = None) -> M:
    """Read and validate one YAML file into a frozen model."""
    return load_document(model, path, context=context)[0]
