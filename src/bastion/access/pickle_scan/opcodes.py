"""Walk one pickle the way an unpickler reads it, recording every global it would import; run nothing.

The walker reads opcodes and arguments exactly as ``pickle.Unpickler`` does (CPython's
``Lib/pickle.py``, which ``_pickle.c`` mirrors), not as :mod:`pickletools` does: pickletools is
stricter in places (``I0x10\\n`` is an int to the unpickler and a parse error to
``pickletools.genops``), and a scanner that stops where the unpickler goes on misses what follows.
Where the two unpicklers differ, or where a value cannot be known without running the pickle,
the walker takes the more permissive reading and goes on, so it sees every opcode a real
unpickler would reach (and maybe a few more). It stops only where every unpickler must stop: an
unknown opcode, an argument cut off by the end of the data, a stack or memo underflow, a call
of something that certainly is not callable, a ``STACK_GLOBAL`` on values that certainly are not
strings, an extension code (which only a ``copyreg.add_extension`` in the loading process could
resolve: none is registered by default), or an import no module can satisfy. That last one
assumes the loading process imports only installed packages and the standard library: a module
whose top-level name is not a Python identifier (``class Foo(nn``, what ``pickle.load`` makes of
a Python source file) or is cut short by a NUL is never one of those, though a file planted on
``sys.path`` under such a name could be. Everything before a parent package name is imported is
still reported, since importing ``a.b c`` imports ``a`` first.

One place the unpicklers read the same bytes differently: an argument that runs past the end of
its FRAME (pickle.py raises; _pickle.c reading a file object without ``peek`` drops the rest of
the frame and reads the argument from after it). A pickler never writes that, so the walker
reports it (``frame_overrun``) rather than guess which reading a loader will make.

It tracks the stack and memo far enough to name what ``STACK_GLOBAL`` resolves to (a name built
at run time, from a call's result, is reported as ``<computed>``) and keeps ints, strings,
tuples and lists as values, which is what following torch's legacy layouts needs.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import struct
import warnings
from dataclasses import dataclass, field

from bastion.access.pickle_scan.byteio import MAX_KEPT_STRING, ByteSource

HIGHEST_PROTOCOL = 5


@dataclass(frozen=True)
class GlobalRef:
    """A global the unpickler would import: ``module.name``, the opcode naming it, its byte offset."""

    name: str
    opcode: str
    offset: int
    reason: str | None = None  # set when the problem is how it is named, not what it names


@dataclass
class PickleWalk:
    start: int
    end: int
    complete: bool  # reached STOP
    failure: str | None  # why an unpickler stops here, when not complete
    began_with_proto: bool
    globals: list[GlobalRef] = field(default_factory=list)
    value: object = None  # what STOP returns, as far as the walker can tell (ints, strs, tuples, lists)
    persistent_ids: list = field(default_factory=list)  # what PERSID/BINPERSID hand persistent_load
    extension: int | None = None  # the extension code it stopped at, if that is where it stopped
    frame_overrun: int | None = None  # offset of an argument that runs past the end of its FRAME
    limit_hit: bool = False


class OpcodeBudget:
    """Opcodes one scan may still walk: a bound on the work a hostile file can cause."""

    def __init__(self, limit: int):
        self.left = limit


class _Opaque:
    __slots__ = ("label",)

    def __init__(self, label: str):
        self.label = label


OTHER = _Opaque("object")  # built from the pickle's own data: never a str, never callable
UNKNOWN = _Opaque("unknown")  # a call's result, a persistent or out-of-band object: could be anything


@dataclass(frozen=True)
class ImportedGlobal:
    name: str


class _Stop(Exception):
    pass


class _Done(Exception):
    def __init__(self, value):
        self.value = value


def walk_pickle(src: ByteSource, start: int, budget: OpcodeBudget) -> PickleWalk:
    """Walk the pickle beginning at ``start`` to its STOP, or to where an unpickler would fail."""
    return _Walker(src, start, budget).run()


class _Walker:
    def __init__(self, src: ByteSource, start: int, budget: OpcodeBudget):
        self.src, self.budget = src, budget
        src.pos = start
        self.walk = PickleWalk(start=start, end=start, complete=False, failure=None, began_with_proto=False)
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict = {}
        self.memo_uncertain = False  # a PUT whose key could not be read: a missing GET proves nothing
        self.proto = 0
        self.op_offset = start
        self.frame_end: int | None = None

    def run(self) -> PickleWalk:
        walk, src = self.walk, self.src
        first = True
        try:
            while True:
                if self.budget.left <= 0:
                    walk.limit_hit, walk.failure = True, "opcode limit reached"
                    break
                self.budget.left -= 1
                if self.frame_end is not None and src.pos >= self.frame_end:
                    self.frame_end = None  # the frame is used up: reads go on from the file
                self.op_offset = src.pos
                code = src.byte()
                if code < 0:
                    raise _Stop("the data ends before STOP")
                entry = _DISPATCH.get(code)
                if entry is None:
                    raise _Stop(f"invalid opcode 0x{code:02x}")
                entry[0](self, *entry[1])
                if first:
                    walk.began_with_proto = code == 0x80
                    first = False
        except _Done as done:
            walk.complete, walk.value = True, done.value
        except _Stop as stop:
            walk.failure = f"{stop} at byte {self.op_offset}"
        walk.end = src.pos
        return walk

    # -- reading arguments -------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        start = self.src.pos
        data = self.src.read(n)
        if data is None:
            raise _Stop("truncated argument")
        self._check_frame(start)
        return data

    def _check_frame(self, start: int) -> None:
        """An argument that starts inside a FRAME must end inside it (see the module docstring)."""
        if self.frame_end is not None and start < self.frame_end < self.src.pos and self.walk.frame_overrun is None:
            self.walk.frame_overrun = self.op_offset

    def _unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _counted(self, n: int) -> tuple[bytes, bool]:
        """``n`` bytes of string data: (what is kept, whether that is all of it)."""
        start = self.src.pos
        data = self.src.read(n, keep=MAX_KEPT_STRING)
        if data is None:
            raise _Stop("truncated argument")
        self._check_frame(start)
        return data, len(data) == n

    def _line(self) -> tuple[bytes, bool]:
        # An empty line is no error here: for GLOBAL, pickle.py imports the module even when the
        # name line is empty (the data ended), so each opcode decides what an empty argument means.
        start = self.src.pos
        raw, length = self.src.readline()
        self._check_frame(start)
        return raw, len(raw) == length

    def _utf8_line(self) -> str:
        raw, whole = self._line()
        return _decode(raw, whole, encoding="utf-8")

    # -- the stack -----------------------------------------------------------------------------

    def _push(self, item) -> None:
        self.stack.append(item)

    def _pop(self):
        if not self.stack:
            raise _Stop("stack underflow")
        return self.stack.pop()

    def _top(self):
        if not self.stack:
            raise _Stop("stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.metastack:
            raise _Stop("no MARK to pop")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def _get(self, key) -> None:
        if key in self.memo:
            self._push(self.memo[key])
        elif self.memo_uncertain:
            self._push(UNKNOWN)
        else:
            raise _Stop(f"memo key {key} not set")

    def _put(self, key) -> None:
        self.memo[key] = self._top()

    # -- globals -----------------------------------------------------------------------------

    def _import(self, module: str, name: str, opcode: str) -> str:
        # The top-level package is imported first, whatever follows it, and before the name is
        # looked up, so an odd tail or an empty name still counts. The builtin and frozen importers
        # compare C strings, which end at a NUL ("os\0x" imports os).
        root = module.split("\x00", 1)[0].split(".", 1)[0]
        if not root.isidentifier():
            raise _Stop(f"import of {module[:60]!r}, which names no installed module")
        if self.proto < 3:  # the unpickler maps Python 2 names (fix_imports)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        self.walk.globals.append(GlobalRef(f"{module}.{name}", opcode, self.op_offset))
        return f"{module}.{name}"

    # -- opcodes (each as pickle.py's load_* reads it) ---------------------------------------

    def op_mark(self):
        self.metastack.append(self.stack)
        self.stack = []

    def op_stop(self):
        raise _Done(self._pop())

    def op_pop(self):
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def op_pop_mark(self):
        self._pop_mark()

    def op_dup(self):
        self._push(self._top())

    def op_push(self, item):  # NONE, NEWTRUE, NEWFALSE, EMPTY_DICT, EMPTY_SET, EMPTY_TUPLE
        self._push(item)

    def op_empty_list(self):
        self._push([])

    def op_text_then_other(self):  # FLOAT: its value does not matter
        self._line()
        self._push(OTHER)

    def op_int(self):
        raw, _ = self._line()
        self._push(OTHER if raw in (b"00", b"01") else _text_int(raw, 0))

    def op_long(self):
        raw, _ = self._line()
        self._push(_text_int(raw[:-1] if raw.endswith(b"L") else raw, 0))

    def op_binint(self, fmt: str):  # BININT, BININT1, BININT2
        self._push(self._unpack(fmt))

    def op_binfloat(self):
        self._read(8)
        self._push(OTHER)

    def op_long1(self):
        self._push(int.from_bytes(self._read(self._unpack("<B")), "little", signed=True))

    def op_counted_other(self, fmt: str):  # LONG4, BINBYTES*, BYTEARRAY8: lengths, values unneeded
        n = self._unpack(fmt)
        if n < 0:
            raise _Stop("negative length")
        self._counted(n)
        self._push(OTHER)

    def op_persid(self):
        raw, whole = self._line()
        self.walk.persistent_ids.append(_decode(raw, whole, encoding="ascii"))
        self._push(UNKNOWN)

    def op_binpersid(self):
        self.walk.persistent_ids.append(self._pop())
        self._push(UNKNOWN)

    def op_string(self):
        raw, whole = self._line()
        if whole:
            if not (len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"')):
                raise _Stop("the STRING argument is not quoted")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    raw = codecs.escape_decode(raw[1:-1])[0]
            except Exception:  # escape_decode raises ValueError and others on bad escapes
                raise _Stop("bad escape in a STRING argument") from None
        self._push(_decode(raw, whole, encoding="latin-1"))  # the loader's encoding= decides; any gives a str

    def op_binstring(self, fmt: str):  # BINSTRING, SHORT_BINSTRING: decoded by the loader's encoding
        n = self._unpack(fmt)
        if n < 0:
            raise _Stop("negative BINSTRING length")
        self._push(_decode(*self._counted(n), encoding="latin-1"))

    def op_unicode(self):
        raw, whole = self._line()
        self._push(_decode(raw, whole, encoding="raw-unicode-escape"))

    def op_binunicode(self, fmt: str):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
        self._push(_decode(*self._counted(self._unpack(fmt)), encoding="utf-8", errors="surrogatepass"))

    def op_global(self):
        module = self._utf8_line()
        name = self._utf8_line()
        self._push(ImportedGlobal(self._import(module, name, "GLOBAL")))

    def op_inst(self):
        module = self._utf8_line()
        name = self._utf8_line()
        self._import(module, name, "INST")  # imported before the MARK is looked for
        self._pop_mark()
        self._push(UNKNOWN)

    def op_stack_global(self):
        name, module = self._pop(), self._pop()
        if isinstance(module, str) and isinstance(name, str):
            self._push(ImportedGlobal(self._import(module, name, "STACK_GLOBAL")))
            return
        if _certainly_not_str(module) or _certainly_not_str(name):
            raise _Stop("STACK_GLOBAL on values that are not strings")
        self.walk.globals.append(GlobalRef("<computed>", "STACK_GLOBAL", self.op_offset,
                                           "the global's name is computed at load time, not a constant: "
                                           "a way to hide what it calls"))
        self._push(UNKNOWN)

    def op_extension(self, fmt: str, opcode: str):  # EXT1, EXT2, EXT4
        code = self._unpack(fmt)
        self.walk.extension = code
        raise _Stop(f"{opcode} extension code {code}, which only the loading process's copyreg registry "
                    "could turn into a global")

    def op_reduce(self):
        self._pop()
        self._call(self._pop())

    def op_newobj(self, arguments: int):  # NEWOBJ (args), NEWOBJ_EX (args, kwargs)
        for _ in range(arguments):
            self._pop()
        self._call(self._pop())

    def op_obj(self):
        items = self._pop_mark()
        if not items:
            raise _Stop("OBJ without a class")
        self._call(items[0])

    def _call(self, target) -> None:
        if target is OTHER or isinstance(target, (int, str, tuple, list)):  # what the pickle built itself
            raise _Stop("call of something that is not callable")
        self._push(UNKNOWN)

    def op_build(self):
        self._pop()
        self._top()
        self.stack[-1] = UNKNOWN

    def op_from_mark(self, build):  # DICT, FROZENSET, LIST, TUPLE: the items since the MARK
        self._push(build(self._pop_mark()))

    def op_tuple_n(self, n: int):  # TUPLE1, TUPLE2, TUPLE3
        items = [self._pop() for _ in range(n)]
        self._push(tuple(reversed(items)))

    def op_append(self):
        value = self._pop()
        if isinstance(self._top(), list):
            self.stack[-1].append(value)

    def op_appends(self):
        items = self._pop_mark()
        if isinstance(self._top(), list):
            self.stack[-1].extend(items)

    def op_setitem(self):
        self._pop()
        self._pop()
        self._top()

    def op_setitems(self):  # SETITEMS, ADDITEMS: the items since the MARK go into the object below it
        self._pop_mark()
        self._top()

    def op_get(self):
        raw, _ = self._line()
        key = _text_int(raw, 10)
        if isinstance(key, int):
            self._get(key)
        else:
            self._push(UNKNOWN)

    def op_binget(self, fmt: str):  # BINGET, LONG_BINGET
        self._get(self._unpack(fmt))

    def op_put(self):
        raw, _ = self._line()
        key = _text_int(raw, 10)
        if not isinstance(key, int):
            self.memo_uncertain = True
            self._top()
            return
        if key < 0:
            raise _Stop("negative PUT argument")
        self._put(key)

    def op_binput(self, fmt: str):  # BINPUT, LONG_BINPUT
        self._put(self._unpack(fmt))

    def op_memoize(self):
        self._put(len(self.memo))

    def op_proto(self):
        version = self._unpack("<B")
        if version > HIGHEST_PROTOCOL:
            raise _Stop(f"unsupported pickle protocol {version}")
        self.proto = version

    def op_frame(self):
        length = self._unpack("<Q")
        if self.frame_end is not None and self.src.pos + length > self.frame_end and self.walk.frame_overrun is None:
            self.walk.frame_overrun = self.op_offset  # a frame that starts inside another and outlasts it
        self.frame_end = self.src.pos + length

    def op_next_buffer(self):
        self._push(OTHER)  # an out-of-band buffer: never a str, never callable

    def op_readonly_buffer(self):
        self._top()


def _decode(raw: bytes, whole: bool, *, encoding: str, errors: str = "strict") -> str:
    if not whole:  # cut at MAX_KEPT_STRING: keep a readable prefix that can match no allowed name
        return raw.decode(encoding if encoding != "raw-unicode-escape" else "latin-1", "replace") + "\u2026"
    try:
        return raw.decode(encoding, errors)
    except UnicodeDecodeError:
        raise _Stop(f"text argument is not valid {encoding}") from None


def _text_int(raw: bytes, base: int):
    try:
        return int(raw, base)
    except ValueError:
        try:
            return int(raw, 10)
        except ValueError:
            return UNKNOWN  # _pickle.c reads some forms int() does not (strtol): go on, value unknown


def _certainly_not_str(item) -> bool:
    return item is OTHER or isinstance(item, (int, tuple, list))


_W = _Walker
_DISPATCH = {ord(code) if isinstance(code, str) else code: (handler, args) for code, handler, *args in (
    ("(", _W.op_mark), (".", _W.op_stop), ("0", _W.op_pop), ("1", _W.op_pop_mark), ("2", _W.op_dup),
    ("N", _W.op_push, OTHER), (0x88, _W.op_push, OTHER), (0x89, _W.op_push, OTHER), ("}", _W.op_push, OTHER),
    (0x8f, _W.op_push, OTHER), (")", _W.op_push, ()), ("]", _W.op_empty_list),
    ("F", _W.op_text_then_other), ("G", _W.op_binfloat), ("I", _W.op_int), ("L", _W.op_long),
    ("J", _W.op_binint, "<i"), ("K", _W.op_binint, "<B"), ("M", _W.op_binint, "<H"), (0x8a, _W.op_long1),
    (0x8b, _W.op_counted_other, "<i"), ("B", _W.op_counted_other, "<I"), ("C", _W.op_counted_other, "<B"),
    (0x8e, _W.op_counted_other, "<Q"), (0x96, _W.op_counted_other, "<Q"),
    ("S", _W.op_string), ("T", _W.op_binstring, "<i"), ("U", _W.op_binstring, "<B"), ("V", _W.op_unicode),
    ("X", _W.op_binunicode, "<I"), (0x8c, _W.op_binunicode, "<B"), (0x8d, _W.op_binunicode, "<Q"),
    ("P", _W.op_persid), ("Q", _W.op_binpersid),
    ("c", _W.op_global), ("i", _W.op_inst), (0x93, _W.op_stack_global),
    (0x82, _W.op_extension, "<B", "EXT1"), (0x83, _W.op_extension, "<H", "EXT2"),
    (0x84, _W.op_extension, "<i", "EXT4"),
    ("R", _W.op_reduce), (0x81, _W.op_newobj, 1), (0x92, _W.op_newobj, 2), ("o", _W.op_obj), ("b", _W.op_build),
    ("d", _W.op_from_mark, lambda items: OTHER), (0x91, _W.op_from_mark, lambda items: OTHER),
    ("l", _W.op_from_mark, list), ("t", _W.op_from_mark, tuple),
    (0x85, _W.op_tuple_n, 1), (0x86, _W.op_tuple_n, 2), (0x87, _W.op_tuple_n, 3),
    ("a", _W.op_append), ("e", _W.op_appends), ("s", _W.op_setitem), ("u", _W.op_setitems),
    (0x90, _W.op_setitems),
    ("g", _W.op_get), ("h", _W.op_binget, "<B"), ("j", _W.op_binget, "<I"),
    ("p", _W.op_put), ("q", _W.op_binput, "<B"), ("r", _W.op_binput, "<I"), (0x94, _W.op_memoize),
    (0x80, _W.op_proto), (0x95, _W.op_frame), (0x97, _W.op_next_buffer), (0x98, _W.op_readonly_buffer),
)}
