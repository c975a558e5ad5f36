"""Reading YAML the way the Go original's yaml.v3 reads it.

PyYAML follows YAML 1.1, where ``on``, ``yes`` and ``no`` are booleans,
``1:30`` is the integer 90, ``010`` is octal and ``2024-01-01`` is a date.
yaml.v3 (and YAML 1.2) reads all of those as strings or decimal integers, so
an ``args`` entry or an ``env`` value would silently change meaning if this
loader did not switch PyYAML to the YAML 1.2 core schema. It also refuses a
key written twice in one mapping, which PyYAML would resolve by keeping the
last one without a word.
"""

from __future__ import annotations

import re

import yaml
from yaml.constructor import ConstructorError

_TAG = "tag:yaml.org,2002:"
_REPLACED_TAGS = {_TAG + t for t in ("bool", "int", "float", "timestamp", "value")}


class Loader(yaml.SafeLoader):
    """A SafeLoader with YAML 1.2 core-schema scalars and no duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable: the base class reports it
            if first is not key_node.start_mark:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first on line {first.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        # An explicit tag (`!!int abc`, `!!timestamp x`) makes PyYAML's
        # constructors fail with plain Python errors; give them a position.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, ArithmeticError):
            tag = node.tag.removeprefix(_TAG)
            raise ConstructorError(
                None, None, f"cannot read this value as !!{tag}", node.start_mark
            ) from None


def _construct_int(loader: Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if len(text) > 100:
        raise ConstructorError(None, None, "integer too large", node.start_mark)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_bool(loader: Loader, node: yaml.ScalarNode) -> bool:
    text = loader.construct_scalar(node).lower()
    if text not in ("true", "false"):
        raise ValueError(text)
    return text == "true"


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
Loader.add_implicit_resolver(
    _TAG + "int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
Loader.add_constructor(_TAG + "int", _construct_int)
Loader.add_constructor(_TAG + "bool", _construct_bool)
