"""YAML read strictly: syntax errors and duplicate keys name their line.

PyYAML keeps the last of two equal keys without a word; in a rules file that silently drops a
condition, so a duplicate key is an error here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml


class YamlProblems(ValueError):
    """The text is not a YAML document we accept; each problem has a line (1-based) if known."""

    def __init__(self, problems: Sequence[tuple[int | None, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    data: Any
    root: yaml.Node | None

    def line_of(self, *path: str | int) -> int | None:
        """The 1-based line where the value at ``path`` (keys and list indexes) starts."""
        node = self.root
        for step in path:
            node = _child(node, step)
            if node is None:
                return None
        return node.start_mark.line + 1 if node is not None else None


def parse_yaml(text: str) -> YamlDocument:
    try:
        # The reader rejects control characters already while it is being constructed.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise YamlProblems([(None, f"YAML error: {exc}")]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None, None)
        duplicates = list(_duplicate_keys(root))
        if duplicates:
            raise YamlProblems(duplicates)
        return YamlDocument(loader.construct_document(root), root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        if mark is None:
            raise YamlProblems([(None, f"YAML syntax error: {reason}")]) from None
        raise YamlProblems(
            [(mark.line + 1, f"column {mark.column + 1}: YAML syntax error: {reason}")]
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblems([(None, f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node) -> list[tuple[int | None, str]]:
    found: list[tuple[int | None, str]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        found.append(
                            (key.start_mark.line + 1, f"duplicate key {key.value!r}")
                        )
                    seen.add(key.value)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(found, key=lambda item: item[0] or 0)


def _child(node: yaml.Node | None, step: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                return value  # type: ignore[no-any-return]
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
        items = node.value
        return items[step] if 0 <= step < len(items) else None
    return None
