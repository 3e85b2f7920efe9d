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


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
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


_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against the documented keys",
    "missing": "add this key",
}


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


def validate(model: type[M], data: Any, *, path: Path, node: yaml.Node | None, context: dict[str, Any] | None = None) -> M:
    """Validate data against a model; the first error becomes a ConfigError with file, line and key."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and err["type"] != "missing":
            message += f" (got {err['input']!r})"
        fix = _FIXES.get(err["type"])
        ctx_fix = (err.get("ctx") or {}).get("fix") if isinstance(err.get("ctx"), dict) else None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(
            message + more, file=path, line=_line_of(node, loc), key=_key_path(loc), fix=ctx_fix or fix
        ) from None


def load_model(model: type[M], path: Path, *, context: dict[str, Any] | None = None) -> M:
    """Read and validate one YAML file into a frozen model."""
    data, node = read_yaml(path)
    if data is None:
        raise ConfigError("file is empty", file=path, fix="see the examples in the repository")
    return validate(model, data, path=path, node=node, context=context)
