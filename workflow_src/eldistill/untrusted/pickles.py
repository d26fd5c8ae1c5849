"""One pickle: scanned opcode by opcode before anything is built, then unpickled with an allowlist.

The scan runs pickletools' parser (it builds no objects) over a reader that cannot read past the file's end,
and models the object graph the pickle describes. It refuses, before any unpickler runs:
- a declared length (BINBYTES8, FRAME, ...) longer than the bytes left: CPython reserves that memory first;
- memo indices beyond the number of opcodes seen: CPython grows its memo table to the index;
- a graph whose expansion as a tree outweighs the file: shared references let 1 KB describe 2^100 leaves,
  and hashing, comparing, repr or JSON conversion walk the whole tree;
- cycles and nesting deeper than MAX_DEPTH (recursion in every later reader);
- more than MAX_EQUAL_HASHES distinct numbers with one hash (multiples of 2^61 - 1 all hash alike): as dict
  keys they make every insertion walk all the others, so 1 MB of them takes minutes to unpickle;
- extension-registry codes and out-of-band buffers (nothing we read uses them).
"""

from __future__ import annotations

import _compat_pickle
import pickle
import pickletools
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

MAX_DEPTH = 500
BASE_BUDGET = 100_000  # tree weight any file may have; beyond it, the budget grows with the file's size
BYTES_PER_WEIGHT = 64  # a string or bytes argument weighs 1 + len // 64 (repeating a long string costs)
MAX_EQUAL_HASHES = 32  # distinct numbers sharing one hash; chance collisions of real data are ~2^-61 each
_NUMBERS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}

_REFUSED = {
    "EXT1": "an extension-registry code",
    "EXT2": "an extension-registry code",
    "EXT4": "an extension-registry code",
    "NEXT_BUFFER": "an out-of-band buffer",
    "READONLY_BUFFER": "an out-of-band buffer",
}
_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # they fill the object below
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


class UnsafePickleError(ValueError):
    """A file asked for something a trusted reader refuses; the message names the file and what."""


class _Bounded:
    """A reader that never reads past `end`, so a declared length can only return what is there."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.end = f, end

    def read(self, n: int = -1) -> bytes:
        left = max(self.end - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 or n > left else n)

    def readline(self) -> bytes:
        return self.f.readline(max(self.end - self.f.tell(), 0))

    def tell(self) -> int:
        return self.f.tell()


def _opcodes(reader: _Bounded, source: str):
    ops = pickletools.genops(reader)
    while True:
        try:
            item = next(ops)
        except StopIteration:
            return
        except Exception as e:  # pickletools raises ValueError (and a few others) on damaged input
            raise ValueError(f"{source}: malformed or truncated pickle ({type(e).__name__}: {e})") from None
        yield item


class _Graph:
    """The objects a pickle describes, as weights and references; no object is built."""

    def __init__(self, source: str):
        self.source = source
        self.weight: list[int] = []
        self.refs: list[list[int]] = []
        self.stack: list[int] = []
        self.marks: list[int] = []
        self.memo: dict[int, int] = {}
        self.numbers: dict[int, set] = {}  # hash -> the distinct numbers with that hash

    def malformed(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: malformed pickle ({what})")

    def count_number(self, value: Any) -> None:
        same = self.numbers.setdefault(hash(value), set())
        same.add(value)
        if len(same) > MAX_EQUAL_HASHES:
            raise UnsafePickleError(
                f"{self.source}: more than {MAX_EQUAL_HASHES} distinct numbers share one hash value "
                "(a hash-flooding pattern that makes unpickling quadratic); refusing the pickle"
            )

    def new(self, refs: list[int], arg: Any) -> int:
        size = len(arg) // BYTES_PER_WEIGHT if isinstance(arg, (str, bytes, bytearray)) else 0
        self.weight.append(1 + size)
        self.refs.append(refs)
        return len(self.weight) - 1

    def pop(self, n: int) -> list[int]:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) - fence < n:
            raise self.malformed("stack underflow")
        if n == 0:
            return []
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def pop_mark(self) -> list[int]:
        if not self.marks:
            raise self.malformed("no MARK to pop to")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> int:
        items = self.pop(1)
        self.stack.append(items[0])
        return items[0]

    def apply(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        """Stack effect of one opcode other than the memo, MARK, POP, DUP and STOP ones (see scan)."""
        before = op.stack_before
        if pickletools.markobject in before:
            items = self.pop_mark()
            operands = self.pop(before.index(pickletools.markobject)) + items
        else:
            operands = self.pop(len(before))
        if op.name in _IN_PLACE:
            self.refs[operands[0]].extend(operands[1:])
            self.stack.append(operands[0])
        else:
            node = self.new(operands, arg)
            self.stack.extend([node] * len(op.stack_after))

    def check_expansion(self, budget: int) -> None:
        """Every object's tree weight (shared references counted each time) within budget; no cycles."""
        n = len(self.weight)
        total, height, state = [0] * n, [0] * n, bytearray(n)  # state: 0 new, 1 on the path, 2 done
        for root in range(n):
            if state[root]:
                continue
            state[root] = 1
            path = [(root, iter(self.refs[root]))]
            while path:
                node, children = path[-1]
                child = next(children, None)
                if child is not None:
                    if state[child] == 1:
                        raise UnsafePickleError(f"{self.source}: the pickle describes a recursive structure")
                    if state[child] == 0:
                        state[child] = 1
                        path.append((child, iter(self.refs[child])))
                    continue
                path.pop()
                state[node] = 2
                refs = self.refs[node]
                total[node] = self.weight[node] + sum(total[c] for c in refs)
                height[node] = 1 + max((height[c] for c in refs), default=0)
                if total[node] > budget:
                    raise UnsafePickleError(
                        f"{self.source}: shared references expand to more than {budget} objects "
                        "(a limit derived from the file size); refusing the pickle"
                    )
                if height[node] > MAX_DEPTH:
                    raise UnsafePickleError(f"{self.source}: objects nest deeper than {MAX_DEPTH} levels")


def scan(f: BinaryIO, end: int, source: str, persistent_ids: bool = False) -> tuple[int, int]:
    """(protocol, offset after STOP) of the pickle at f's position, after the checks in the module docstring."""
    start = f.tell()
    reader = _Bounded(f, end)
    graph = _Graph(source)
    protocol, count, stopped = 0, 0, False
    for op, arg, _pos in _opcodes(reader, source):
        count += 1
        name = op.name
        if name in _REFUSED:
            raise UnsafePickleError(f"{source}: the pickle uses {_REFUSED[name]} ({name}); refusing it")
        if name in ("PERSID", "BINPERSID") and not persistent_ids:
            raise UnsafePickleError(f"{source}: persistent ids are not used by this kind of file; refusing them")
        if name == "PROTO":
            protocol = arg
        elif name == "FRAME":
            if arg > end - reader.tell():
                raise UnsafePickleError(f"{source}: a frame declares {arg} bytes, more than the file holds")
        elif name == "MARK":
            graph.marks.append(len(graph.stack))
        elif name == "STOP":
            if graph.marks or len(graph.stack) != 1:
                raise graph.malformed("STOP with a stack of other than one object")
            stopped = True
            break
        elif name == "POP":
            if graph.marks and graph.marks[-1] == len(graph.stack):
                graph.marks.pop()
            else:
                graph.pop(1)
        elif name == "POP_MARK":
            graph.pop_mark()
        elif name == "DUP":
            graph.stack.append(graph.top())
        elif name in _PUT or name == "MEMOIZE":
            index = len(graph.memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= count:
                raise UnsafePickleError(f"{source}: memo index {index} after {count} opcodes; refusing the pickle")
            graph.memo[index] = graph.top()
        elif name in _GET:
            if arg not in graph.memo:
                raise graph.malformed(f"memo index {arg} read before it was written")
            graph.stack.append(graph.memo[arg])
        else:
            if name in _NUMBERS and isinstance(arg, (int, float)):
                graph.count_number(arg)
            graph.apply(op, arg)
    if not stopped:
        raise graph.malformed("no STOP opcode")
    graph.check_expansion(BASE_BUDGET + 2 * (reader.tell() - start))
    return protocol, reader.tell()


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the allowlisted globals (after mapping Python 2 names like pickle itself does)."""

    def __init__(self, file, source: str, allowed: Mapping, protocol: int, fallback=None, persistent_load=None):
        super().__init__(file, encoding="latin1")  # Python 2 byte strings, as numpy recommends for its arrays
        self.source, self.allowed, self.protocol = source, allowed, protocol
        self.fallback, self.persistent = fallback, persistent_load

    def find_class(self, module: str, name: str):
        if self.protocol < 3:  # pickle.Unpickler's fix_imports: __builtin__.set is builtins.set, ...
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        found = self.fallback(module, name) if self.fallback else None
        if found is None:
            raise UnsafePickleError(f"{self.source}: refusing to load global '{module}.{name}' (not on the allowlist)")
        return found

    def persistent_load(self, pid):
        if self.persistent is None:  # the scan refuses these first; kept as a second lock
            raise UnsafePickleError(f"{self.source}: persistent ids are not used by this kind of file")
        return self.persistent(pid)


def load_pickle(
    f: BinaryIO,
    source: str,
    allowed: Mapping[tuple[str, str], Any],
    end: int | None = None,
    fallback: Callable[[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """The pickle at f's position (f is left after its STOP), scanned first, unpickled with `allowed` globals.

    `end`: where the file's data ends (default: its size). `fallback(module, name)` may resolve further
    globals (None refuses). Every refusal is an UnsafePickleError and every damage a ValueError, both
    starting with `source`; a MemoryError is never turned into either."""
    start = f.tell()
    if end is None:
        end = f.seek(0, 2)
        f.seek(start)
    protocol, stop = scan(f, end, source, persistent_ids=persistent_load is not None)
    f.seek(start)
    unpickler = SafeUnpickler(f, source, allowed, protocol, fallback, persistent_load)
    try:
        obj = unpickler.load()
    except MemoryError:
        raise
    except UnsafePickleError as e:
        message = str(e)
        raise UnsafePickleError(message if message.startswith(source) else f"{source}: {message}") from None
    except Exception as e:  # a damaged file raises many types inside the unpickler or an allowed callable
        raise ValueError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    if f.tell() != stop:
        raise ValueError(f"{source}: the unpickler stopped at byte {f.tell()}, the scan at {stop}")
    return obj
