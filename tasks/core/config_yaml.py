"""Reading ``pipeline.yaml`` text safely: bounded YAML, no duplicate keys, guarded ``${NAME}``.

* **Bounded.** YAML anchors and aliases (``&a`` / ``*a``) let a few hundred bytes describe
  billions of nodes (the "billion laughs" file). The composed node graph is walked *before*
  anything is constructed or copied, counting every node an alias expands to; past
  :data:`MAX_NODES` nodes or :data:`MAX_SCALAR_CHARS` characters of expanded text the file is
  refused. A recursive alias hits the same limit.
* **No duplicate keys.** PyYAML keeps the last of two equal keys silently; here the second is an
  error naming its key path and both lines. (Keys brought in by a ``<<`` merge may be overridden:
  that is what merges are for.)
* **One-line syntax errors**: file, line, column and the problem.
* **``${NAME}`` / ``${NAME:-default}``** read the environment, except variables whose names look
  like credentials (see :func:`is_secret_name`): those are reachable only through a
  ``{secret: NAME}`` field, which keeps them a ``SecretStr`` and out of every message. The values
  that were substituted are remembered so error messages can show ``${NAME}`` instead of them
  (see :class:`Substitutions`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tasks.errors import ConfigError

MAX_NODES = 100_000
MAX_SCALAR_CHARS = 4_000_000
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``SafeLoader``; kept as our own class so nothing registered on it leaks elsewhere."""


def _mark(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _syntax_error(exc: yaml.YAMLError, origin: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        where = _mark(exc.problem_mark) or _mark(exc.context_mark)
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem and exc.context_mark is not None:
            context, line = _one_line(exc.context), exc.context_mark.line + 1
            problem = (
                f"{context} (line {line}), {problem}"
                if problem.startswith("but ")
                else f"{problem} ({context} at line {line})"
            )
        return ConfigError(f"{origin}: {where}: not valid YAML: {problem}")
    return ConfigError(f"{origin}: not valid YAML: {_one_line(str(exc))}")


# A key path while walking: (parent path, key or index), shared between siblings so a deep or
# wide graph costs O(1) per node; rendered only for a message.
_Path = tuple[Any, object] | None


def _render(path: _Path, limit: int = 12) -> str:
    parts: list[str] = []
    while path is not None:
        path, part = path
        parts.append(str(part))
    parts.reverse()
    if len(parts) > limit:
        parts = [*parts[: limit // 2], "...", *parts[-limit // 2 :]]
    return ".".join(parts) or "the top level"


def _check_nodes(root: yaml.Node, origin: str, loader: _Loader) -> None:
    """Walk the node graph as construction would expand it: bound its size and depth, refuse
    duplicate keys. Iterative, and stops at the first limit, so a hostile file costs at most
    MAX_NODES steps."""
    nodes = 0
    chars = 0
    stack: list[tuple[yaml.Node, _Path, int]] = [(root, None, 0)]
    while stack:
        node, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(
                f"{origin}: expands to more than {MAX_NODES:,} YAML nodes (through anchors and "
                f"aliases, near {_render(path)}); refused"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{origin}: nested deeper than {MAX_DEPTH} levels (a recursive alias?) near "
                f"{_render(path)}; refused"
            )
        if isinstance(node, yaml.ScalarNode):
            chars += len(node.value)
            if chars > MAX_SCALAR_CHARS:
                raise ConfigError(
                    f"{origin}: expands to more than {MAX_SCALAR_CHARS:,} characters of text "
                    f"(through anchors and aliases, near {_render(path)}); refused"
                )
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, (path, i), depth + 1) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    stack.append((value_node, (path, "<<"), depth + 1))
                    continue
                key = _key(key_node, loader)
                child: _Path = (path, key)
                if key is not _UNHASHABLE:
                    first = seen.get(key)
                    if first is not None:
                        raise ConfigError(
                            f"{origin}: {_mark(key_node.start_mark)}: {_render(child)}: "
                            f"duplicate key (first defined at {_mark(first.start_mark)})"
                        )
                    seen[key] = key_node
                stack.append((key_node, child, depth + 1))
                stack.append((value_node, child, depth + 1))


_UNHASHABLE = object()


def _key(node: yaml.Node, loader: _Loader) -> Any:
    """The key as construction will see it (``yes`` and ``true`` are the same key)."""
    if not isinstance(node, yaml.ScalarNode):
        return _UNHASHABLE  # a complex key; construction rejects it as unhashable
    value = loader.construct_object(node)
    try:
        hash(value)
    except TypeError:
        return _UNHASHABLE
    return value


def _join(path: str, part: object) -> str:
    return f"{path}.{part}" if path else str(part)


def _flow_nesting_line(text: str) -> int | None:
    """The first line where ``[``/``{`` nest deeper than MAX_DEPTH, counted outside quoted
    scalars and comments, or None. PyYAML's scanner is quadratic in flow nesting (2,000 ``[``
    take seconds), so such text is refused before it is scanned."""
    depth = 0
    quote: str | None = None
    previous = "\n"
    line = 1
    for char in text:
        if char == "\n":
            line += 1
        if quote is not None:
            if char == quote:
                quote = None
        elif char == "#" and previous in " \t\n":
            quote = "\n"  # a comment runs to the end of the line
        elif char in "\"'" and previous in " \t\n[{,:":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth = max(depth - 1, 0)
        previous = char
    return None


def read_yaml(text: str, origin: str) -> Any:
    """Parse one YAML document with the limits above; :class:`ConfigError` (one line) if not."""
    deep = _flow_nesting_line(text)
    if deep is not None:
        raise ConfigError(f"{origin}: line {deep}: nested deeper than {MAX_DEPTH} levels; refused")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, origin, loader)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, origin) from None
    except RecursionError:
        raise ConfigError(f"{origin}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


# --- ${NAME} ----------------------------------------------------------------------------------

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

SECRET_PREFIXES = ("AUDIENCE_LAKE_SECRET_", "AUDIENCE_LAKE_PEPPER")
SECRET_NAMES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)
# Anywhere in the name (CLIENTSECRET, DB_PASSWORD, GITHUB_TOKEN, ...).
SECRET_FRAGMENTS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "PRIVATE", "APIKEY")
# As a whole ``_``-separated word (MAILCHIMP_API_KEY, SMTP_PASS; but not MONKEY, PASSENGER).
SECRET_WORDS = frozenset({"KEY", "KEYS", "PASS", "PWD", "PEPPER", "DSN"})


def is_secret_name(name: str) -> bool:
    """Does an environment variable's name say it holds a credential?

    The rule: ``AUDIENCE_LAKE_SECRET_*`` and ``AUDIENCE_LAKE_PEPPER*``; the AWS credential
    variables; any name containing SECRET, PASSWORD, PASSWD, TOKEN, CREDENTIAL, PRIVATE or APIKEY;
    any name with KEY, KEYS, PASS, PWD, PEPPER or DSN as a whole ``_``-separated word. It is a
    safety net for the common names, not a proof that other variables hold nothing secret.
    """
    upper = name.upper()
    if upper.startswith(SECRET_PREFIXES) or upper in SECRET_NAMES:
        return True
    if any(fragment in upper for fragment in SECRET_FRAGMENTS):
        return True
    return any(word in SECRET_WORDS for word in upper.split("_"))


@dataclass
class Substitutions:
    """What ``${NAME}`` put into the config, so messages can show the template, not the value."""

    values: dict[str, str] = field(default_factory=dict)  # substituted text -> "${NAME}"

    def scrub(self, message: str) -> str:
        """``message`` with every substituted value (longest first) replaced by its ``${NAME}``.

        Values shorter than 4 characters are left alone: they cannot carry a credential, and
        replacing every ``1`` or ``de`` would garble the message.
        """
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= 4:
                message = message.replace(value, self.values[value])
        return message


def interpolate(value: Any, env: Mapping[str, str], path: str, substitutions: Substitutions) -> Any:
    """A copy of ``value`` with ``${NAME}`` / ``${NAME:-default}`` replaced in every string.

    Raises :class:`ConfigError` naming the key path for an unset variable without a default
    and for a secret-named variable (which must be read through ``{secret: NAME}``).
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env, _join(path, k), substitutions) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, _join(path, i), substitutions) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if is_secret_name(name):
            raise ConfigError(
                f"{path or '(top level)'}: ${{{name}}} looks like a secret and is not "
                "interpolated into plain config values; use a field that takes "
                "{secret: NAME} (read from AUDIENCE_LAKE_SECRET_<NAME>) instead"
            )
        if name in env:
            substituted = env[name]
        elif default is not None:
            substituted = default
        else:
            raise ConfigError(
                f"{path or '(top level)'}: environment variable {name} is not set and has no "
                "default"
            )
        if substituted and name in env:
            substitutions.values.setdefault(substituted, "${" + name + "}")
        return substituted

    result = ENV_REF.sub(replace, value)
    if result != value and result:
        substitutions.values.setdefault(result, value)  # the whole field: show the template
    return result
