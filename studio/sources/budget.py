"""A reading budget for torch.save files, checked before torch.load sees them.

torch.load(weights_only=True) runs no code, but it believes the sizes a file declares and its pure-Python
unpickler does whatever work the opcodes ask for. So, before it runs:

- zip format (data.pkl + data/N records): every record must expand at most MAX_RATIO times (torch.save
  stores records uncompressed; a deflated one can turn 4 MB into 4 GB), at most MAX_TOTAL_BYTES in all,
  and the pickle (data.pkl) is at most MAX_PICKLE_BYTES;
- legacy format and plain pickles: at most MAX_PICKLE_BYTES of pickle, and the storages it declares must
  fit in the bytes the file really holds after it (torch allocates each declared size before reading);
- the pickle itself is walked once with pickletools (which parses, never executes) over the opcodes the
  weights-only unpickler accepts, keeping only sizes: `bytearray(n)` calls, tensor views that declare more
  elements than their storage spans (a stride-0 view materialises on the first copy), storages larger than
  their records, dict keys or set members built from many shared parts (hashing one costs its expanded
  size: a few kB of memo references can stand for 2**60 parts), and keys whose hashes collide.

The work the unpickler does is then linear in the pickle's opcodes, and those are bounded (MAX_PICKLE_OPS):
that is the time budget. Each refusal names the file, the limit and what the file declares.
"""

from __future__ import annotations

import math
import pickletools
import zipfile
from collections import Counter
from pathlib import Path

from ..errors import CheckpointError
from . import sniff as sniffing
from .archive import MAX_RATIO, MAX_TOTAL_BYTES

MAX_PICKLE_BYTES = 64 * 1024**2  # real state dicts pickle to kB-MB; a multimodal checkpoint's tokenizer ~20 MB
# The time budget: torch's weights-only unpickler is a Python loop over opcodes (so is this walk): 1.05 million
# took 2.7-5 s each on the shared 2-core machine (load average 7). A state-dict entry takes ~25 opcodes, a Lightning optimizer's state
# ~60 a parameter: 2 million is ~80,000 tensors, far beyond real checkpoints (bert-base has ~200).
MAX_PICKLE_OPS = 2_000_000
RATIO_CHECK_FROM = 1024**2  # records smaller than this may compress any amount (a 1 MiB cap on what they cost)
MAX_BYTEARRAY = 64 * 1024**2  # bytes `bytearray(n)` calls may allocate in all (torch.save never writes one)
MAX_KEY_WEIGHT = 10_000  # parts of one dict key / set member, shared parts counted each time they appear
MAX_SAME_HASH = 64  # distinct keys of one dict with the same hash (real integers below 2**61 never collide)
_CAP = 10**15
_TENSOR_REBUILDS = (
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_qtensor",
)
_HASHING = ("builtins.set", "collections.Counter")


def _refuse(shown: str, what: str, hint: str | None = None) -> CheckpointError:
    return CheckpointError(
        f"{shown}: {what}; refused before reading it.",
        hint=hint or "Save the state_dict with torch.save(model.state_dict(), ...) or as .safetensors.",
    )


# ------------------------------------------------------------------------------------------ abstract values


class _Tup:
    __slots__ = ("items", "w")

    def __init__(self, items: list):
        self.items = items
        self.w = min(_CAP, 1 + sum(_weight(v) for v in items))


class _Box:  # list / dict / set / any object the unpickler makes: only its weight matters
    __slots__ = ("kind", "items", "w", "hashes")

    def __init__(self, kind: str):
        self.kind, self.items, self.w, self.hashes = kind, [], 1, None


class _Glob:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    __slots__ = ("key", "nbytes")

    def __init__(self, key: str, nbytes: int):
        self.key, self.nbytes = key, nbytes


def _weight(v) -> int:
    return getattr(v, "w", 1)


def _concrete(v):
    """A hashable Python value for an abstract one made only of numbers / strings / tuples, else None."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    if isinstance(v, _Tup):
        parts = [_concrete(x) for x in v.items]
        return None if any(p is None and x is not None for p, x in zip(parts, v.items)) else tuple(parts)
    return None


def _itemsize(storage_type) -> int:
    name = storage_type.name.rpartition(".")[2] if isinstance(storage_type, _Glob) else ""
    try:
        import torch

        return torch.storage._get_dtype_from_pickle_storage_type(name).itemsize
    except Exception:  # noqa: BLE001 - torch's private lookup, any failure: unknown storage type
        return 1  # unknown storage type: the weights-only unpickler refuses it anyway


class _Scan:
    def __init__(self, shown: str):
        self.shown = shown
        self.storages: dict[str, int] = {}
        self.bytearray_bytes = 0

    # dict keys, set / Counter members: hashing costs the key's expanded size
    def hashed(self, target: _Box | None, key) -> None:
        w = _weight(key)
        if w > MAX_KEY_WEIGHT:
            raise _refuse(
                self.shown,
                f"its pickle holds a dict key (or set member) made of {w:,}"
                f"{'+' if w >= _CAP else ''} parts (shared parts repeated; the limit is "
                f"{MAX_KEY_WEIGHT:,}): hashing it would take the unpickler minutes or more",
            )
        if target is None or isinstance(key, str):
            return
        value = _concrete(key)
        if value is None:
            return
        try:
            h = hash(value)
        except TypeError:
            return
        target.hashes = target.hashes or Counter()
        target.hashes[h] += 1
        if target.hashes[h] > MAX_SAME_HASH:
            raise _refuse(
                self.shown,
                f"its pickle holds more than {MAX_SAME_HASH} dict keys with the same hash "
                "(built to collide): inserting them would take quadratic time",
            )

    def reduce(self, func, args):
        name = func.name if isinstance(func, _Glob) else ""
        items = args.items if isinstance(args, _Tup) else []
        if name == "builtins.bytearray" and items and isinstance(items[0], int) and not isinstance(items[0], bool):
            self.bytearray_bytes += max(items[0], 0)
            if self.bytearray_bytes > MAX_BYTEARRAY:
                raise _refuse(
                    self.shown,
                    f"its pickle asks for bytearrays of {self.bytearray_bytes:,} bytes "
                    f"(the limit is {MAX_BYTEARRAY:,}) that the file does not hold",
                )
        elif name in _HASHING and items and isinstance(items[0], (_Box, _Tup)):
            for member in items[0].items:
                self.hashed(None, member)
        elif name in _TENSOR_REBUILDS and len(items) >= 4:
            self.tensor(items[1], items[2], items[3])
        out = _Box("object")
        out.w = min(_CAP, 1 + _weight(args))
        return out

    def tensor(self, offset, size, stride) -> None:
        sizes = _concrete(size) if isinstance(size, _Tup) else None
        strides = _concrete(stride) if isinstance(stride, _Tup) else None
        if (
            not sizes
            or not strides
            or len(sizes) != len(strides)
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in (*sizes, *strides))
        ):
            return
        if any(s <= 0 for s in sizes):
            return
        numel = math.prod(sizes)
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(sizes, strides))
        if numel > span:
            raise _refuse(
                self.shown,
                f"a tensor of its pickle declares {numel:,} elements (shape {list(sizes)}) "
                f"over {span:,} stored ones (strides {list(strides)}): a stride-0 or "
                "overlapping view, never what a model saves, that expands when copied",
            )

    def persistent(self, pid) -> None:
        items = pid.items if isinstance(pid, _Tup) else []
        if len(items) >= 5 and items[0] == "storage" and isinstance(items[4], int):
            key = str(items[2])
            nbytes = max(items[4], 0) * _itemsize(items[1])
            self.storages[key] = max(self.storages.get(key, 0), nbytes)


def _fill(name: str, stack: list, marks: list[list], scan: _Scan) -> list | None:
    """APPEND(S) / SETITEM(S): the items go into the container below them. Returns the stack, or None when
    that is no list / dict / set."""
    if name in ("APPEND", "SETITEM"):
        n = 1 if name == "APPEND" else 2
        items = stack[-n:]
        del stack[-n:]
    else:
        items, stack = stack, marks.pop()
    target = stack[-1]
    if not isinstance(target, _Box):
        return None
    if name.startswith("SET"):
        for k in items[0::2]:
            scan.hashed(target, k)
    else:
        target.items.extend(items)
    target.w = min(_CAP, target.w + sum(_weight(v) for v in items))
    return stack


def scan_pickle(data, shown: str) -> tuple[dict[str, int], bool]:
    """Walk one pickle (bytes, or a binary stream left just after its STOP) without running anything, and
    raise CheckpointError for the budget breaches listed in the module docstring. Returns the storages it
    declares (key -> bytes) and whether it ended with STOP. Opcodes the weights-only unpickler does not
    accept end the walk (it refuses them itself), as does a stream pickletools cannot parse."""
    scan = _Scan(shown)
    complete = False
    stack: list = []
    marks: list[list] = []
    memo: dict[int, object] = {}
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if count >= MAX_PICKLE_OPS:
                raise _refuse(
                    shown,
                    f"its pickle has more than {MAX_PICKLE_OPS:,} opcodes, the limit (the unpickler "
                    "works through them one by one; a state dict's pickle needs ~25 a tensor)",
                )
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                complete = True
                break
            if name == "MARK":
                marks.append(stack)
                stack = []
            elif name in ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING"):
                stack.append(arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name == "EMPTY_TUPLE":
                stack.append(_Tup([]))
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                stack.append(_Box(name[6:].lower()))
            elif name == "GLOBAL":
                stack.append(_Glob(str(arg).replace(" ", ".").replace("\n", ".")))
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "TUPLE":
                items, stack = stack, marks.pop()
                stack.append(_Tup(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(_Tup(items))
            elif name == "BINPERSID":
                scan.persistent(stack.pop())
                stack.append(_Box("storage"))
            elif name == "REDUCE":
                args = stack.pop()
                stack[-1] = scan.reduce(stack[-1], args)
            elif name == "NEWOBJ":
                args = stack.pop()
                stack[-1] = _Box("object")
                stack[-1].w = min(_CAP, 1 + _weight(args))
            elif name == "BUILD":
                stack.pop()
            elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS"):
                stack = _fill(name, stack, marks, scan)
                if stack is None:
                    break  # the unpickler refuses this itself
            else:
                break  # an opcode the weights-only unpickler refuses: nothing more to budget
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - malformed stream: torch.load says so in its own words
        pass
    return scan.storages, complete


# ------------------------------------------------------------------------------------------ files


def check_file(path: Path, shown: str, kind: str) -> None:
    """Raise CheckpointError when reading the torch.save file `path` would break the budget."""
    if kind == sniffing.TORCH_ZIP:
        _check_zip(path, shown)
    elif kind in (sniffing.TORCH_LEGACY, sniffing.PICKLE):
        _check_stream(path, shown, kind)


def _check_zip(path: Path, shown: str) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # torch.load says what is wrong with it
    with zf:
        members = zf.infolist()
        total = 0
        for m in members:
            total += m.file_size
            if (
                m.compress_type != zipfile.ZIP_STORED
                and m.file_size > RATIO_CHECK_FROM
                and m.file_size > MAX_RATIO * max(m.compress_size, 1)
            ):
                raise _refuse(
                    shown,
                    f"record {m.filename!r} is compressed {m.file_size / max(m.compress_size, 1):,.0f}x "
                    f"({m.compress_size:,} bytes in the file, {m.file_size:,} in memory; the limit is "
                    f"{MAX_RATIO}x, and torch.save stores records uncompressed)",
                )
        if total > MAX_TOTAL_BYTES:
            raise _refuse(shown, f"its records declare {total:,} bytes in all; the limit is {MAX_TOTAL_BYTES:,}")
        pkl = next((m for m in members if m.filename == "data.pkl" or m.filename.endswith("/data.pkl")), None)
        if pkl is None:
            return
        if pkl.file_size > MAX_PICKLE_BYTES:
            raise _refuse(
                shown,
                f"its pickle ({pkl.filename}) is {pkl.file_size:,} bytes; the limit is "
                f"{MAX_PICKLE_BYTES:,} (a state dict's pickle holds names and shapes, not weights)",
            )
        try:
            data = zf.read(pkl)
        except Exception:  # noqa: BLE001 - a bad CRC or truncated member: torch.load says so
            return
        declared, _ = scan_pickle(data, shown)
        prefix = pkl.filename[: -len("data.pkl")]
        sizes = {m.filename: m.file_size for m in members}
        for key, nbytes in declared.items():
            held = sizes.get(f"{prefix}data/{key}")
            if held is not None and nbytes > held:
                raise _refuse(shown, f"storage {key!r} declares {nbytes:,} bytes but its record holds {held:,}")


def _check_stream(path: Path, shown: str, kind: str) -> None:
    import io

    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(MAX_PICKLE_BYTES + 1)
    # legacy torch.save: magic number, protocol, system info, the object, storage keys, then raw storages
    stream = io.BytesIO(data)
    declared: dict[str, int] = {}
    for _ in range(5 if kind == sniffing.TORCH_LEGACY else 1):
        if stream.tell() >= len(data):
            break
        found, complete = scan_pickle(stream, shown)
        declared.update(found)
        if not complete:
            if len(data) > MAX_PICKLE_BYTES:
                raise _refuse(
                    shown,
                    f"its pickle is more than {MAX_PICKLE_BYTES:,} bytes, the limit (a state "
                    "dict's pickle holds names and shapes, not weights)",
                )
            return  # not parseable: torch.load says what is wrong with it
    end = stream.tell()
    total = sum(declared.values())
    if kind == sniffing.TORCH_LEGACY and total > size - end:
        raise _refuse(
            shown, f"its storages declare {total:,} bytes but the file holds only {size - end:,} after its pickles"
        )
