"""The rules file as text and as YAML data: a bounded read, parsing that remembers the line of every key and
value, and errors that read `FILE:LINE: key.path: message`.

The rules file is the user's, but a wrong path or a hostile edit must not stall the proxy: only a regular
file of at most MAX_RULES_BYTES is read, and YAML aliases may add at most ALIAS_BUDGET nodes.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml

from .model import RulesError

MAX_RULES_BYTES = 1024 * 1024  # a rules file is a few kB; this refuses a wrong path before reading it all
ALIAS_BUDGET = 10_000  # YAML nodes that aliases may add to the document (an alias bomb adds billions)

# Where a value sits in the document: mapping keys and list indexes from the top.
KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """`rules[0].match.headers.user-agent`."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def read_rules_file(path: str | os.PathLike[str]) -> str:
    """The text of a rules file; RulesError unless it is a regular file (a symlink to one is fine) of at
    most MAX_RULES_BYTES of UTF-8. Opened non-blocking: a FIFO put in its place must not hang the reader."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise RulesError([f"{path}: cannot read rules file: {e.strerror or e}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RulesError([f"{path}: cannot read rules file: not a regular file"])
        if st.st_size > MAX_RULES_BYTES:
            raise RulesError([f"{path}: cannot read rules file: {st.st_size} bytes, more than {MAX_RULES_BYTES}"])
        chunks, size = [], 0
        while size <= MAX_RULES_BYTES and (chunk := os.read(fd, MAX_RULES_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise RulesError([f"{path}: cannot read rules file: {e.strerror or e}"]) from None
    finally:
        os.close(fd)
    if size > MAX_RULES_BYTES:  # it grew while being read
        raise RulesError([f"{path}: cannot read rules file: more than {MAX_RULES_BYTES} bytes"])
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RulesError([f"{path}: cannot read rules file: not UTF-8 text ({e.reason} at byte {e.start})"]) from None


class Source:
    """One rules text being loaded: its data, the lines of its keys and values, the errors found so far."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: list[tuple[int, str]] = []
        self.lines: dict[KeyPath, tuple[int, int]] = {}  # path -> (line of key, line of value)

    def error(self, path: KeyPath, message: str, *, at_key: bool = False, line: int | None = None) -> None:
        """Record an error at `path` (at its key's line if `at_key`); returns None so checkers can
        `return self.error(...)`."""
        line = line or self.line(path, at_key)
        where = f"{format_path(path)}: " if path else ""
        self.errors.append((line, f"{self.name}:{line}: {where}{message}"))

    def line(self, path: KeyPath, at_key: bool = False) -> int:
        """The line of `path`'s value (or key), else of the nearest enclosing value that has one."""
        while path not in self.lines and path:
            path, at_key = path[:-1], False
        key_line, value_line = self.lines.get(path, (1, 1))
        return key_line if at_key else value_line

    def fail(self) -> RulesError:
        """The errors so far, in line order."""
        return RulesError([msg for _, msg in sorted(self.errors, key=lambda e: e[0])])

    def parse(self, text: str) -> Any:
        """Plain data from YAML text, remembering every key's and value's line. Duplicate keys, keys that are
        not plain strings and values YAML cannot construct are errors; the rest of the document still loads.
        Raises RulesError if the text is not YAML, or its aliases expand it too far."""
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()  # aliases are shared nodes here: composing costs the text's size
            if node is None:
                return None
            line, problem = _alias_problem(node)
            if not problem:
                return self._data(loader, node, (), 1)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, problem = (mark.line + 1 if mark else 1), " ".join(filter(None, (e.context, e.problem)))
        except yaml.YAMLError as e:
            line, problem = 1, str(e)
        except RecursionError:
            line, problem = 1, "nested too deeply"
        finally:
            loader.dispose()
        raise RulesError([f"{self.name}:{line}: invalid YAML: {problem}"])

    def _data(self, loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, key_line: int) -> Any:
        self.lines[path] = (key_line, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            out: dict[str, Any] = {}
            for k, v in node.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    self.error(path, "keys must be plain strings", line=line)
                    continue
                key = k.value
                if key in out:
                    first = self.lines[path + (key,)][0]
                    self.error(path + (key,), f"duplicate key (first at line {first})", line=line)
                    continue
                out[key] = self._data(loader, v, path + (key,), line)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._data(loader, v, path + (i,), v.start_mark.line + 1) for i, v in enumerate(node.value)]
        try:
            return loader.construct_object(node)
        except ValueError as e:  # e.g. a date out of range, an integer of more than 4300 digits
            return self.error(path, f"invalid value: {e}")


def _alias_problem(root: yaml.Node) -> tuple[int, str | None]:
    """(line, why) if aliases make the node graph under `root` too big to expand, or cyclic; else (1, None).

    Each node's expanded size is counted once (memoised), so this costs the graph's size, not its expansion
    (sizes grow exponentially with alias levels: Python's integers hold them, a few digits a level).
    """
    sizes: dict[int, int] = {}  # id(node) -> nodes in its expansion; -1 while being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        children = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) \
            else node.value if isinstance(node, yaml.SequenceNode) else ()
        if expanded:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if id(node) in sizes:
            if sizes[id(node)] < 0:  # reached again before its expansion finished: it holds itself
                return node.start_mark.line + 1, "an alias refers to a node that holds it (recursive alias)"
            continue
        sizes[id(node)] = -1
        stack.append((node, True))
        stack.extend((c, False) for c in children if sizes.get(id(c), 0) <= 0)
    added = sizes[id(root)] - len(sizes)
    if added > ALIAS_BUDGET:
        return 1, f"aliases expand the document by more than {ALIAS_BUDGET} nodes (refused: an alias bomb?)"
    return 1, None
