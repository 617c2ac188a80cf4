"""The walk behind sources.budget: a pickle read the way torch's weights-only unpickler reads it, keeping only
sizes and counts, and nothing run.

torch.load(weights_only=True) runs no code of the file's choosing, but what it may call still allocates and
works as the file says: `bytearray(10**9)`, `_codecs.encode` chained on its own output, a tensor constructor
given a size, a tensor rebuilt over a storage it is larger than (torch grows the storage to fit), a set or
a dict copied from one shared list a hundred thousand times, a dict key hashed whole at every insertion. So
the walk below reads the pickle opcode by opcode exactly as torch/_weights_only_unpickler.py does (the same
opcodes, the same argument formats: no pickletools, whose parse differs in places), and:

- judges each GLOBAL by what the unpickler resolves it to: the Python 2 names (`__builtin__`, `copy_reg`,
  ...) mapped as torch maps them (its tables are _compat_pickle's, applied whatever the protocol), then
  looked up in torch's own allow-list: `__builtin__.bytearray` is `bytearray`;
- counts the bytes every allow-listed callable would allocate (bytearrays, encoded bytes, tensors and
  storages built from sizes, tensor copies, copied containers at ELEMENT_BYTES an entry) against a budget
  proportional to the pickle's size (ALLOC_PER_BYTE, at least ALLOC_FLOOR, at most MAX_ALLOC);
- counts the steps the unpickler takes beyond its opcodes (each element a call copies or iterates, each
  part of a dict key or set member it hashes: shared parts count each time they are visited) against a budget
  proportional to the pickle's size (WORK_PER_BYTE, at least WORK_FLOOR, at most MAX_WORK): the walk's own
  work is linear in those steps, so it ends in seconds too;
- checks every tensor against the storage it views (a view larger than its storage, or a stride-0 one,
  expands), dict keys of too many parts (MAX_KEY_WEIGHT) and keys built to collide (MAX_SAME_HASH).

Where torch itself would stop (an opcode or a global it refuses, a malformed stream), the walk stops too
and torch.load says what is wrong in its own words. Each refusal names the file, the limit and the number.
"""

from __future__ import annotations

import functools
import math
import pickle
import struct
from collections import Counter
from typing import Any

from studio.errors import CheckpointError

# The time budget: torch's weights-only unpickler is a Python loop over opcodes (so is this walk): 1.05 million
# took 2.7-5 s each on the shared 2-core machine (load average 7). A state-dict entry takes ~25 opcodes, a
# Lightning optimizer's state ~60 a parameter: 2 million is ~80,000 tensors, far beyond real checkpoints.
MAX_PICKLE_OPS = 2_000_000
# Steps beyond the opcodes (those are MAX_PICKLE_OPS): a call costs the elements it copies or iterates, a
# hashed key its parts. What torch.save writes costs ~1 step a byte of pickle; shared references multiply it.
WORK_PER_BYTE = 8
WORK_FLOOR = 1_000_000
MAX_WORK = 50_000_000  # ~1-3 s of the unpickler's C-level work (hashing, copying), ~ the opcode limit's time
# Bytes what the pickle calls may allocate (torch.save writes a bytes / bytearray value inline, so a real one
# costs about its own length; a Counter or set ~64 bytes an entry written with ~3 bytes of pickle).
ALLOC_PER_BYTE = 32
ALLOC_FLOOR = 16 * 1024**2
MAX_ALLOC = 256 * 1024**2
ELEMENT_BYTES = 64  # one entry of a dict / set / list a call builds (entry, index, the pointer) at most
MAX_KEY_WEIGHT = 10_000  # parts of one dict key / set member, shared parts counted each time they appear
MAX_SAME_HASH = 64  # distinct keys of one dict with the same hash (real integers below 2**61 never collide)
MAX_EXPANSION = 10  # bytes per character any stdlib codec writes at most ('\U0010ffff' by unicode_escape)
_CAP = 10**15


def work_budget(pickle_bytes: int) -> int:
    return min(MAX_WORK, WORK_FLOOR + WORK_PER_BYTE * pickle_bytes)


def alloc_budget(pickle_bytes: int) -> int:
    return min(MAX_ALLOC, ALLOC_FLOOR + ALLOC_PER_BYTE * pickle_bytes)


def refuse(shown: str, what: str, hint: str | None = None) -> CheckpointError:
    return CheckpointError(
        f"{shown}: {what}; refused before reading it.",
        hint=hint or "Save the state_dict with torch.save(model.state_dict(), ...) or as .safetensors.",
    )


# ------------------------------------------------------------------------------------------ names


def _mappings() -> tuple[dict, dict]:
    try:
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING  # what the weights-only unpickler applies
    except ImportError:  # noqa: BLE001 - an older torch: the stdlib's tables, which torch's are copied from
        from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
    return IMPORT_MAPPING, NAME_MAPPING


def resolve_global(module: str, name: str, proto: int | None = None) -> str:
    """The dotted name the unpickler imports for GLOBAL `module` `name`. With `proto` None, as torch's
    weights-only unpickler does (its Python 2 tables applied whatever the protocol); with a protocol, as
    pickle.Unpickler.find_class does (the stdlib's _compat_pickle tables, only below protocol 3)."""
    if proto is None:
        imports, names = _mappings()
    elif proto < 3:
        import _compat_pickle

        imports, names = _compat_pickle.IMPORT_MAPPING, _compat_pickle.NAME_MAPPING
    else:
        return f"{module}.{name}"
    if (module, name) in names:
        module, name = names[(module, name)]
    elif module in imports:
        module = imports[module]
    return f"{module}.{name}"


@functools.lru_cache(maxsize=1)
def _roles() -> dict:
    """What each callable on torch's weights-only allow-list does with its arguments, keyed by the object."""
    import _codecs
    import collections

    import torch

    u = torch._utils
    roles: dict = {
        bytearray: "bytearray",
        _codecs.encode: "encode",
        set: "members",
        collections.Counter: "members",
        collections.OrderedDict: "copy",
        complex: "copy",
        torch.device: "copy",
        torch.Size: "size",
        torch.Tensor: "construct",
        torch.nn.Parameter: "param",
        torch.storage.UntypedStorage: "storage",
        torch.storage.TypedStorage: "storage",
    }
    for cls in torch._tensor_classes:
        roles[cls] = "construct"
    for name, role in (
        ("_rebuild_tensor", "tensor"),
        ("_rebuild_tensor_v2", "tensor"),
        ("_rebuild_qtensor", "tensor"),
        ("_rebuild_tensor_v3", "tensor_v3"),
        ("_rebuild_parameter", "param"),
        ("_rebuild_parameter_with_state", "param"),
        ("_rebuild_device_tensor_from_cpu_tensor", "to_device"),
        ("_rebuild_device_tensor_from_numpy", "to_device"),
        ("_rebuild_meta_tensor_no_storage", "no_data"),
        ("_rebuild_sparse_tensor", "no_data"),
        ("_rebuild_nested_tensor", "no_data"),
        ("_rebuild_wrapper_subclass", "no_data"),
    ):
        if hasattr(u, name):
            roles[getattr(u, name)] = role
    roles[getattr(torch.serialization, "_get_layout", None)] = "copy"
    roles[getattr(torch._tensor, "_rebuild_from_type_v2", None)] = "from_type"
    roles.pop(None, None)
    return roles


def _allowed() -> tuple[dict, dict]:
    from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

    return _get_allowed_globals(), _get_user_allowed_globals()


# ------------------------------------------------------------------------------------------ abstract values


class _Tup:  # a tuple (torch.Size too): its items kept
    __slots__ = ("items", "w", "h")

    def __init__(self, items: list):
        self.items = items
        self.w = min(_CAP, 1 + sum(_w(v) for v in items))
        self.h = _hash_of(items)


def _hash_of(items: list) -> int | None:
    """hash(tuple(items)) when every item is a number / bytes / such a tuple, else None. Python's tuple hash
    is made of its items' hashes only (and hash(hash(x)) == hash(x)), so a tuple's hash comes from its
    items' hashes, each worked out once when that item was made: a shared part is never walked again."""
    hashes = []
    for x in items:
        if isinstance(x, _Tup):
            if x.h is None:
                return None
            hashes.append(x.h)
        elif isinstance(x, (bool, int, float, bytes)) or x is None:
            hashes.append(hash(x))
        else:
            return None  # strings (their hash is random per process), containers, objects
    return hash(tuple(hashes))


class _Box:  # list / dict / set / Counter / bytes / any object a call makes
    __slots__ = ("kind", "items", "n", "w", "hw", "maxw", "hashes")

    def __init__(self, kind: str, n: int = 0, w: int = 1, hw: int = 0, maxw: int = 0):
        self.kind, self.n, self.w, self.hw, self.maxw = kind, n, w, hw, maxw
        self.items: list[Any] | None = [] if kind == "list" else None
        self.hashes: Counter[Any] | None = None


class _Glob:
    __slots__ = ("obj", "name", "written", "user")

    def __init__(self, obj, name: str, written: str, user: bool = False):
        self.obj, self.name, self.written, self.user = obj, name, written, user

    def shown(self) -> str:
        return self.name if self.written == self.name else f"{self.written} (read as {self.name})"


class _Storage:
    __slots__ = ("nbytes", "itemsize")

    def __init__(self, nbytes: int, itemsize: int):
        self.nbytes, self.itemsize = nbytes, itemsize


class _Tensor:  # numel: what iterating it costs; nbytes: the storage it views (a later set_'s bound)
    __slots__ = ("numel", "nbytes", "itemsize")

    def __init__(self, numel: int, nbytes: int, itemsize: int = 4):
        self.numel, self.nbytes, self.itemsize = numel, nbytes, itemsize


def _w(v) -> int:
    return getattr(v, "w", 1)


def _n(v) -> int:
    """The elements a call copies or iterates when given `v`."""
    if isinstance(v, (str, bytes)):
        return len(v)
    if isinstance(v, _Tup):
        return len(v.items)
    if isinstance(v, _Box):
        return v.n
    if isinstance(v, _Tensor):
        return v.numel
    return 1


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v) -> tuple | None:
    items = v.items if isinstance(v, _Tup) else v.items if isinstance(v, _Box) and v.kind == "list" else None
    if items is None or not all(_int(x) for x in items):
        return None
    return tuple(items)


def _itemsize(g) -> int | None:
    """The element size of a dtype / storage type global, None when it is neither."""
    import torch

    obj = g.obj if isinstance(g, _Glob) else None
    if obj is torch.storage.UntypedStorage:
        return 1
    dtype = obj if isinstance(obj, torch.dtype) else getattr(obj, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    return None


# ------------------------------------------------------------------------------------------ the walk's model


class _Scan:
    def __init__(self, shown: str, pickle_bytes: int):
        self.shown, self.pickle_bytes = shown, pickle_bytes
        self.storages: dict[str, int] = {}  # key -> the most bytes any reference declares (record checks)
        self.loaded: dict = {}  # key -> the storage torch keeps for it (the first reference's)
        self.work, self.work_limit = 0, work_budget(pickle_bytes)
        self.alloc, self.alloc_limit = 0, alloc_budget(pickle_bytes)

    def spend(self, steps: int) -> None:
        self.work = min(_CAP, self.work + steps)
        if self.work > self.work_limit:
            raise refuse(
                self.shown,
                f"its pickle asks the unpickler for more than {self.work_limit:,} steps (the limit for a "
                f"{self.pickle_bytes:,}-byte pickle: each element a call copies or iterates, each part of a key "
                "it hashes, shared parts counted each time they are visited)",
            )

    def allocate(self, nbytes: int, what: str, func: _Glob) -> None:
        self.alloc = min(_CAP, self.alloc + max(nbytes, 0))
        if self.alloc > self.alloc_limit:
            raise refuse(
                self.shown,
                f"its pickle asks for {what} of {self.alloc:,} bytes in all, the last through "
                f"{func.shown()} (the limit for a {self.pickle_bytes:,}-byte pickle is {self.alloc_limit:,}) "
                "that the file does not hold",
            )

    # dict keys, set / Counter members: hashing costs the key's expanded size
    def hashed(self, target: _Box | None, key) -> None:
        w = _w(key)
        if w > MAX_KEY_WEIGHT:
            raise refuse(
                self.shown,
                f"its pickle holds a dict key (or set member) made of {w:,}"
                f"{'+' if w >= _CAP else ''} parts (shared parts repeated; the limit is "
                f"{MAX_KEY_WEIGHT:,}): hashing it would take the unpickler minutes or more",
            )
        self.spend(w)
        if target is None:
            return
        target.n, target.hw, target.maxw = target.n + 1, min(_CAP, target.hw + w), max(target.maxw, w)
        h = key.h if isinstance(key, _Tup) else _hash_of([key])
        if h is None:
            return
        target.hashes = target.hashes or Counter()
        target.hashes[h] += 1
        if target.hashes[h] > MAX_SAME_HASH:
            raise refuse(
                self.shown,
                f"its pickle holds more than {MAX_SAME_HASH} dict keys with the same hash "
                "(built to collide): inserting them would take quadratic time",
            )

    def members(self, arg) -> tuple[int, int]:
        """Hash every member of `arg` (set(arg), Counter(arg), OrderedDict(arg)): (rehash cost, largest)."""
        if isinstance(arg, _Tup):
            for member in arg.items:
                self.hashed(None, member)
            return sum(_w(m) for m in arg.items), max((_w(m) for m in arg.items), default=0)
        if isinstance(arg, _Box):
            if arg.kind == "list":
                members = arg.items or []
                for member in members:
                    self.hashed(None, member)
                return sum(_w(m) for m in members), max((_w(m) for m in members), default=0)
            if arg.maxw > MAX_KEY_WEIGHT:
                self.hashed(None, _Box("object", w=arg.maxw))  # refuses, with the same words
            self.spend(arg.hw)
            return arg.hw, arg.maxw
        return 0, 0

    # ---- calls (REDUCE, NEWOBJ)

    def call(self, func, args):
        while True:
            items = args.items if isinstance(args, _Tup) else None
            if items is None:  # func(*args) unpacks whatever args is
                self.spend(1 + _n(args))
                return _Box("object", w=min(_CAP, 1 + _w(args)))
            cost = 1 + sum(_n(a) for a in items)  # spent after the call's own check: its message says more
            if not isinstance(func, _Glob):
                self.spend(cost)
                return _Box("object", w=min(_CAP, 1 + _w(args)))
            if func.user:
                raise refuse(
                    self.shown,
                    f"its pickle calls {func.shown()}, allowed by this process (add_safe_globals) but of "
                    "unknown cost: the scan cannot bound what it allocates",
                )
            role = _roles().get(func.obj, "other")
            if role != "from_type":
                out = getattr(self, "_" + role)(func, items, args)
                self.spend(cost)
                return out
            # torch._tensor._rebuild_from_type_v2(func, new_type, args, state) calls func(*args) itself
            self.spend(cost)
            if len(items) < 3:
                return _Box("object")
            if len(items) > 3:
                self.spend(_n(items[3]))
            func, args = items[0], items[2]

    def _other(self, func, items, args):  # dtypes, layouts, storage type names: not callable
        return _Box("object", w=min(_CAP, 1 + _w(args)))

    def _bytearray(self, func, items, args):
        if not items:
            return _Box("bytes")
        first = items[0]
        if _int(first):
            nbytes = max(first, 0)
        elif len(items) >= 2 and isinstance(first, str):  # bytearray(text, encoding)
            nbytes = _encoded(first, items[1])
        else:  # a copy of bytes / an iterable of small ints
            nbytes = _n(first)
        self.allocate(nbytes, "bytearrays", func)
        return _Box("bytes", n=nbytes, w=1)

    def _encode(self, func, items, args):
        first = items[0] if items else ""
        nbytes = _encoded(first, items[1] if len(items) > 1 else "utf-8")
        self.allocate(nbytes, "encoded bytes", func)
        return _Box("bytes", n=nbytes, w=1)

    def _members(self, func, items, args):
        arg = items[0] if items else None
        n = _n(arg) if arg is not None else 0
        hw, maxw = self.members(arg)
        self.allocate(ELEMENT_BYTES * n, "containers", func)
        return _Box("dict", n=n, w=min(_CAP, 1 + _w(args)), hw=hw, maxw=maxw)

    def _copy(self, func, items, args):
        n = sum(_n(a) for a in items)
        hw, maxw = self.members(items[0]) if items and isinstance(items[0], _Box) else (0, 0)
        self.allocate(ELEMENT_BYTES * n, "containers", func)
        return _Box("dict", n=n, w=min(_CAP, 1 + _w(args)), hw=hw, maxw=maxw)

    def _size(self, func, items, args):
        arg = items[0] if items else None
        self.allocate(8 * _n(arg), "sizes", func)
        if isinstance(arg, _Tup):
            return _Tup(list(arg.items))
        if isinstance(arg, _Box) and arg.kind == "list":
            return _Tup(list(arg.items or []))
        return _Box("object", w=min(_CAP, 1 + _w(args)))

    def _construct(self, func, items, args):  # torch.Tensor(...), torch.FloatTensor(...): the legacy constructor
        import torch

        dtype = getattr(func.obj, "dtype", None)
        itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else torch.get_default_dtype().itemsize
        if len(items) == 1 and isinstance(items[0], _Storage):
            return _Tensor(items[0].nbytes // max(itemsize, 1), items[0].nbytes, itemsize)
        if len(items) == 1 and isinstance(items[0], _Tensor):
            return items[0]
        sizes = tuple(items) if all(_int(x) for x in items) else _ints(items[0]) if len(items) == 1 else None
        numel = math.prod(max(s, 0) for s in sizes) if sizes else 0
        if len(items) == 1 and not _int(items[0]):  # data (or a size) given as a sequence
            numel = max(numel, _w(items[0]))
        numel = min(numel, _CAP)
        self.allocate(numel * itemsize, "tensors", func)
        return _Tensor(numel, numel * itemsize, itemsize)

    def _storage(self, func, items, args):
        import torch

        itemsize = 1 if func.obj is torch.storage.UntypedStorage else torch.get_default_dtype().itemsize
        if not items:
            count = 0
        elif _int(items[0]):
            count = max(items[0], 0)
        else:
            count = _w(items[0])
        self.allocate(count * itemsize, "storages", func)
        return _Storage(min(_CAP, count * itemsize), itemsize)

    def _param(self, func, items, args):
        if len(items) >= 4:  # _rebuild_parameter_with_state: the state is set attribute by attribute
            self.spend(_n(items[3]))
        if items and isinstance(items[0], _Tensor):
            return items[0]
        return _Box("object", w=min(_CAP, 1 + _w(args)))

    def _to_device(self, func, items, args):
        data = items[0] if items else None
        if not isinstance(data, _Tensor):
            return _Box("object")
        itemsize = _itemsize(items[1]) if len(items) > 1 else None
        itemsize = itemsize or 16
        self.allocate(data.numel * itemsize, "tensor copies", func)
        return _Tensor(data.numel, data.numel * itemsize, itemsize)

    def _no_data(self, func, items, args):  # meta / sparse / nested / wrapper tensors: no dense storage made
        return _Tensor(_CAP, 0)

    def _tensor(self, func, items, args):
        if len(items) < 4 or not isinstance(items[0], _Storage):
            return _Box("object")
        storage = items[0]
        return self.view(func.shown(), storage.nbytes, storage.itemsize, items[1], items[2], items[3])

    def _tensor_v3(self, func, items, args):  # (storage, offset, size, stride, grad, hooks, dtype, ...)
        if len(items) < 7 or not isinstance(items[0], _Storage):
            return _Box("object")
        itemsize = _itemsize(items[6]) or 16
        return self.view(func.shown(), items[0].nbytes, itemsize, items[1], items[2], items[3])

    def view(self, what: str, nbytes: int, itemsize: int, offset, size, stride):
        """A tensor of `size` / `stride` at `offset` over a storage of `nbytes`: torch grows the storage to
        fit (set_), and a stride-0 view expands when copied; both refused."""
        sizes, strides = _ints(size), _ints(stride) if stride is not None else None
        if sizes is not None and stride is None:  # set_(source, offset, size): contiguous
            strides = tuple(math.prod(sizes[i + 1 :]) for i in range(len(sizes)))
        if sizes is None or strides is None or not _int(offset):
            raise refuse(
                self.shown,
                f"a tensor of its pickle ({what}) gives its offset, shape or strides as something other "
                "than plain integers, which torch.save never writes: the scan cannot bound it",
            )
        self.spend(2 * len(sizes))
        if len(sizes) != len(strides) or offset < 0 or any(s < 0 for s in (*sizes, *strides)):
            return _Box("object")  # torch refuses these itself
        numel = math.prod(sizes)
        if numel == 0:
            return _Tensor(0, nbytes, itemsize)
        span = 1 + sum((s - 1) * st for s, st in zip(sizes, strides))
        if numel > span:
            raise refuse(
                self.shown,
                f"a tensor of its pickle declares {numel:,} elements (shape {list(sizes)}) "
                f"over {span:,} stored ones (strides {list(strides)}): a stride-0 or "
                "overlapping view, never what a model saves, that expands when copied",
            )
        need = (offset + span) * itemsize
        if need > nbytes:
            raise refuse(
                self.shown,
                f"a tensor of its pickle (shape {list(sizes)}, offset {offset:,}) needs {need:,} bytes of a "
                f"storage that holds {nbytes:,}: torch would grow the storage to fit",
            )
        return _Tensor(numel, nbytes, itemsize)

    # ---- other opcodes

    def persistent(self, pid):
        items = pid.items if isinstance(pid, _Tup) else []
        if len(items) < 5 or items[0] != "storage":
            return _Box("object")
        key, numel = str(items[2]), items[4]
        itemsize = _itemsize(items[1]) or 1
        if _int(numel):
            self.storages[key] = max(self.storages.get(key, 0), max(numel, 0) * itemsize)
        if key not in self.loaded:  # torch keeps the first reference's storage for a key
            self.loaded[key] = _Storage(max(numel, 0) * itemsize if _int(numel) else 0, itemsize)
        root = self.loaded[key]
        view = items[5].items if len(items) > 5 and isinstance(items[5], _Tup) else None
        if view and len(view) >= 3 and _int(view[1]) and _int(view[2]):  # legacy view: root[offset: offset+size]
            vkey = ("view", str(view[0]))
            if vkey not in self.loaded:
                start = max(view[1], 0) * itemsize
                end = min(root.nbytes, start + max(view[2], 0) * itemsize)
                self.loaded[vkey] = _Storage(max(end - start, 0), itemsize)
            return self.loaded[vkey]
        return root

    def build(self, inst, state):
        """BUILD: a tensor's state is set_(*state) (legacy files); anything else copies the state in."""
        self.spend(1 + _n(state))
        items = state.items if isinstance(state, _Tup) else None
        if not isinstance(inst, _Tensor) or not items or len(items) not in (3, 4):
            return inst
        source = items[0]
        if isinstance(source, (_Storage, _Tensor)):
            stride = items[3] if len(items) == 4 else None
            return self.view("a tensor's state", source.nbytes, inst.itemsize, items[1], items[2], stride)
        return inst


def _encoded(text, encoding) -> int:
    """The most bytes `text` encoded with `encoding` takes (any stdlib codec: MAX_EXPANSION a character)."""
    n = _n(text)
    name = encoding.lower().replace("_", "-") if isinstance(encoding, str) else ""
    if name in ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "ascii", "us-ascii"):
        return n
    if name in ("utf-8", "utf8"):
        return 4 * n
    return MAX_EXPANSION * n + 64


def _fill(name: str, stack: list, marks: list[list], scan: _Scan) -> list | None:
    """APPEND(S) / SETITEM(S): the items go into the container below them. Returns the stack, or None where
    the unpickler stops (no container there)."""
    if name in ("APPEND", "SETITEM"):
        n = 1 if name == "APPEND" else 2
        if len(stack) < n + 1:
            return None
        items = stack[-n:]
        del stack[-n:]
    else:
        if not marks or not marks[-1]:
            return None
        items, stack = stack, marks.pop()
    target = stack[-1]
    if not isinstance(target, _Box):
        return None
    scan.spend(len(items))
    if name.startswith("SET"):
        for k in items[0::2]:
            scan.hashed(target, k)
    else:
        if target.kind != "list" or target.items is None:
            return None  # the unpickler appends to lists only
        target.items.extend(items)
        target.n += len(items)
        for v in items:
            w = _w(v)
            target.hw, target.maxw = min(_CAP, target.hw + w), max(target.maxw, w)
    target.w = min(_CAP, target.w + sum(_w(v) for v in items))
    return stack


# ------------------------------------------------------------------------------------------ the reader

# the opcodes torch's weights-only unpickler accepts (any other stops it), by their byte
_OPS = {
    getattr(pickle, name)[0]: name
    for name in (
        "GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE "
        "NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT "
        "BINUNICODE SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP"
    ).split()
}
_NO_ARG = frozenset(
    "NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWFALSE NEWTRUE "
    "EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BINPERSID STOP".split()
)
_VALUES = ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING")


class _Stop(Exception):
    """Where torch's unpickler stops too (short read, empty stack, unknown memo, refused opcode or global)."""


class _Reader:
    """The pickle as torch's unpickler reads it: read(n) and readline() over bytes."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) < n:
            raise _Stop
        self.pos += n
        return out

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        out, self.pos = self.data[self.pos : end], end
        return out


def _read_arg(name: str, r: _Reader, encoding: str):
    if name == "BININT":
        return struct.unpack("<i", r.read(4))[0]
    if name in ("BININT1", "BINGET", "BINPUT", "PROTO"):
        return r.read(1)[0]
    if name == "BININT2":
        return struct.unpack("<H", r.read(2))[0]
    if name in ("LONG_BINGET", "LONG_BINPUT"):
        return struct.unpack("<I", r.read(4))[0]
    if name == "BINFLOAT":
        return struct.unpack(">d", r.read(8))[0]
    if name == "BINUNICODE":
        return str(r.read(struct.unpack("<I", r.read(4))[0]), "utf-8", "surrogatepass")
    if name == "SHORT_BINSTRING":
        return r.read(r.read(1)[0]).decode(encoding, "strict")
    if name == "LONG1":
        return int.from_bytes(r.read(r.read(1)[0]), "little", signed=True)
    if name == "GLOBAL":  # torch: readline()[:-1].decode("utf-8"), twice, then its Python 2 tables
        module = r.readline()[:-1].decode("utf-8")
        return module, r.readline()[:-1].decode("utf-8")
    return None


def _global(module: str, name: str) -> _Glob:
    full = resolve_global(module, name)
    allowed, user = _allowed()
    if full in allowed:
        return _Glob(allowed[full], full, f"{module}.{name}")
    if full in user and full.partition(".")[0] not in ("sys", "os", "posix", "nt"):
        return _Glob(user[full], full, f"{module}.{name}", user=True)
    raise _Stop  # torch refuses it: nothing after it runs


def scan_pickle(data, shown: str, start: int = 0, encoding: str = "utf-8") -> tuple[dict[str, int], bool, int]:
    """Walk the pickle in `data` (bytes) from `start` as torch's weights-only unpickler would read it,
    running nothing, and raise CheckpointError for the breaches listed in the module docstring. Returns
    the storages it declares (key -> bytes), whether it ended with STOP, and the offset where it ended."""
    r = _Reader(data if isinstance(data, bytes) else bytes(data), start)
    scan = _Scan(shown, len(r.data) - start)
    stack: list = []
    marks: list[list] = []
    memo: dict[int, object] = {}
    complete = False
    try:
        for count in range(MAX_PICKLE_OPS + 1):
            if count == MAX_PICKLE_OPS:
                raise refuse(
                    shown,
                    f"its pickle has more than {MAX_PICKLE_OPS:,} opcodes, the limit (the unpickler "
                    "works through them one by one; a state dict's pickle needs ~25 a tensor)",
                )
            name = _OPS.get(r.read(1)[0])
            if name is None:
                break  # an opcode the weights-only unpickler refuses
            arg = _read_arg(name, r, encoding) if name not in _NO_ARG else None
            if name == "STOP":
                complete = True
                break
            stack = _step(name, arg, stack, marks, memo, scan)
    except (_Stop, UnicodeDecodeError):  # the unpickler stops at the same point
        pass
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - fail closed: what the scan cannot follow is not read
        raise refuse(
            shown, f"the reading budget's scan could not follow its pickle ({type(e).__name__} at byte {r.pos:,})"
        ) from e
    return scan.storages, complete, r.pos


def _pop(stack: list, n: int = 1) -> list:
    if len(stack) < n:
        raise _Stop  # the unpickler's stack is empty there too
    items = stack[len(stack) - n :]
    del stack[len(stack) - n :]
    return items


def _step(name: str, arg, stack: list, marks: list[list], memo: dict, scan: _Scan) -> list:
    if name in ("BINPUT", "LONG_BINPUT"):
        memo[arg] = _pop(stack)[0]
        stack.append(memo[arg])
    elif name in _VALUES:
        stack.append(arg)
    elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
        stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
    elif name == "MARK":
        marks.append(stack)
        stack = []
    elif name == "EMPTY_TUPLE":
        stack.append(_Tup([]))
    elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
        stack.append(_Box(name[6:].lower()))
    elif name == "GLOBAL":
        stack.append(_global(*arg))
    elif name in ("BINGET", "LONG_BINGET"):
        if arg not in memo:
            raise _Stop
        stack.append(memo[arg])
    elif name == "TUPLE":
        if not marks:
            raise _Stop
        items, stack = stack, marks.pop()
        stack.append(_Tup(items))
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        stack.append(_Tup(_pop(stack, int(name[-1]))))
    elif name == "BINPERSID":
        stack.append(scan.persistent(_pop(stack)[0]))
    elif name in ("REDUCE", "NEWOBJ"):
        func, args = _pop(stack, 2)
        stack.append(scan.call(func, args))
    elif name == "BUILD":
        inst, state = _pop(stack, 2)
        stack.append(scan.build(inst, state))
    elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS"):
        filled = _fill(name, stack, marks, scan)
        if filled is None:
            raise _Stop  # the unpickler refuses this itself
        stack = filled
    return stack  # PROTO: nothing to do
