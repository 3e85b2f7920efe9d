"""Load a YAML file into a pydantic model once, at the edge, with errors that name file, line and key.

pydantic validates; PyYAML's node tree knows where every key sits. This module joins the two so a
user reads ``devices/lab.yaml:12: devices[1].port: Input should be a valid integer (got 'twenty-two');
fix: ...`` and no traceback. Unknown keys are errors, never warnings: a misspelt key must not
silently keep its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys forbidden, no infinite or NaN numbers."""

    # YAML reads .inf and .nan as floats: no duration, threshold or scale of ours means them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


def line_in(path: Path | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the key at ``loc`` in a YAML file already validated (None when it cannot be read again).

    For a check made after loading, across keys no single model field holds (``measure.iterations``
    beside a stop-rule key): the error still points at the line.
    """
    if path is None:
        return None
    try:
        _, node = read_yaml(path)
    except ConfigError:
        return None
    return line_of(node, loc)


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
    value = err.get("input")
    if kind in ("int_type", "float_type") and isinstance(value, bool):
        return "write a number: true and false are not numbers"
    if kind == "int_type" and isinstance(value, float):
        return "write a whole number, without a fraction"
    fixed = {
        "extra_forbidden": "remove it, or check its spelling against the documented keys",
        "missing": "add this key",
        "int_parsing": "write a whole number, without quotes",
        "int_type": "write a whole number, without quotes",
        "int_from_float": "write a whole number, without a fraction",
        "float_parsing": "write a number, without quotes",
        "float_type": "write a number, without quotes",
        "finite_number": "write a finite number (not .inf or .nan)",
        "bool_parsing": "write true or false",
        "bool_type": "write true or false, without quotes",
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


def _duplicate_key(root: yaml.Node, loader: yaml.SafeLoader) -> tuple[str, yaml.Node, yaml.Node] | None:
    """The first key written twice in one mapping: its key path, first and second key nodes.

    PyYAML keeps the last value silently, so a second ``threads:`` would quietly win. Keys compare
    as YAML reads them (``1`` and ``0x1`` are one key); merge keys (``<<``) may legitimately repeat.
    """
    stack: list[tuple[yaml.Node, tuple[int | str, ...]]] = [(root, ())]
    seen_nodes: set[int] = set()
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:  # an alias: the anchored node was checked where it was written
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = loader.construct_object(key_node)
                    if key in first:
                        return _key_path((*loc, str(key))), first[key], key_node
                    first[key] = key_node
                    stack.append((value_node, (*loc, str(key))))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
    return None


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return the plain data and the node tree (for line numbers).

    Every way the text can be wrong (not UTF-8, a character YAML refuses, bad syntax, a key written
    twice) is a ConfigError with the file and line, never a PyYAML or codec traceback.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=path, fix="check the path") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", file=path, fix="pass the path of a .yaml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path, fix="check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded",
            file=path,
            line=line,
            fix="save the file as UTF-8 (it may be binary, or in another encoding such as Latin-1 or UTF-16)",
        ) from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character up front
        node = loader.get_single_node()
        duplicate = _duplicate_key(node, loader) if node is not None else None
        if duplicate is not None:
            key_path, first, second = duplicate
            raise ConfigError(
                f"key written twice (first on line {first.start_mark.line + 1}); YAML would keep the last silently",
                file=path,
                line=second.start_mark.line + 1,
                key=key_path,
                fix=f"keep one {second.value}: line and delete the other",
            )
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as exc:
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(
            f"not a YAML text file: character {character} is not allowed",
            file=path,
            line=text[: exc.position].count("\n") + 1,
            fix="remove the character (a NUL byte means a binary or UTF-16 file); save the file as UTF-8 text",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"not valid YAML: {problem}",
            file=path,
            line=mark.line + 1 if mark else None,
            fix="fix the syntax at that line (indentation, a missing ':' or closing bracket)",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path, fix="fix the syntax") from None
    except RecursionError:
        raise ConfigError("not usable YAML: nested too deeply", file=path, fix="flatten the nesting") from None
    finally:
        if loader is not None:
            loader.dispose()
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
