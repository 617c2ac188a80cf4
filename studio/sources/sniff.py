"""What a checkpoint file really holds, told from its bytes (never from its extension alone).

`sniff(path)` reads the first bytes (and, for zip files, the member names) and returns a Sniffed
result: the content kind and a short description for messages. Nothing is unpickled or executed.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Content kinds
TORCH_ZIP = "torch"  # torch.save (zip format): data.pkl + data/N
TORCH_LEGACY = "torch-legacy"  # torch.save legacy (pickle stream with a magic number)
TORCHSCRIPT = "torchscript"  # torch.jit.save archive: code/ + constants.pkl (runs code when loaded)
PROGRAM = "program"  # torch.export.save (.pt2) archive (runs code when loaded)
ARCHIVE = "archive"  # a plain .zip of files (e.g. a zipped model folder)
SAFETENSORS = "safetensors"
PICKLE = "pickle"  # a pickle stream that is not a torch.save file
BROKEN_ZIP = "broken-zip"  # starts like a zip but its directory cannot be read (truncated?)
UNKNOWN = "unknown"

# Kinds the studio can never read as weights, with what they are (for messages)
FOREIGN = "foreign"

DESCRIPTIONS = {
    TORCH_ZIP: "a PyTorch checkpoint (torch.save)",
    TORCH_LEGACY: "a PyTorch checkpoint in the legacy torch.save format",
    TORCHSCRIPT: "a TorchScript archive (torch.jit.save)",
    PROGRAM: "a torch.export program (.pt2)",
    ARCHIVE: "a zip archive",
    SAFETENSORS: "a safetensors file",
    PICKLE: "a Python pickle",
    BROKEN_ZIP: "a zip file (or torch.save checkpoint) whose directory cannot be read: truncated or corrupted",
    UNKNOWN: "a file of unknown format",
}
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save legacy format magic number


@dataclass(frozen=True)
class Sniffed:
    kind: str
    description: str
    names: tuple[str, ...] = ()  # zip member names (zip kinds only)


def _zip_kind(names: list[str]) -> str:
    def has(suffix: str) -> bool:
        return any(n == suffix or n.endswith("/" + suffix) for n in names)

    if any("/code/" in n or n.startswith("code/") for n in names) or has("constants.pkl"):
        return TORCHSCRIPT
    if has("archive_format") or (
        any("/models/" in n and n.endswith(".json") for n in names) and any("/data/weights/" in n for n in names)
    ):
        return PROGRAM
    if has("data.pkl"):
        return TORCH_ZIP
    return ARCHIVE


def _safetensors_header(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _foreign(head: bytes, path: Path) -> str | None:
    """Well-known non-PyTorch formats, described so the person knows what they uploaded."""
    if head[:2] == b"\x1f\x8b":
        return "a gzip file (upload checkpoints as .zip, not .tar.gz)"
    if head[:6] in (b"7z\xbc\xaf\x27\x1c",) or head[:4] == b"Rar!":
        return "a 7z/rar archive (only .zip archives are accepted)"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (Keras/TensorFlow weights, not PyTorch)"
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy array, not a PyTorch checkpoint"
    if head[:1] == b"\x08" and (b"onnx" in head[:256] or b"pytorch" in head[:256]):
        return "an ONNX model (use `studio inspect` for .onnx files; convert takes PyTorch checkpoints)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (only .zip archives are accepted)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return "a text (JSON-like) file, not model weights"
        if isinstance(obj, dict) and "model_type" in obj:
            return "a model config.json, not weights (put it beside the weights or pass it with --config)"
        return "a JSON file, not model weights"
    if stripped[:15].lower().startswith(("<!doctype", "<html")):
        return "an HTML page (a failed download?), not model weights"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer file: the real weights were never downloaded (run `git lfs pull`)"
    return "a text file, not model weights"


def sniff(path: Path) -> Sniffed:
    """Tell what `path` holds from its content. Raises OSError only when it cannot be read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return Sniffed(BROKEN_ZIP, DESCRIPTIONS[BROKEN_ZIP])
        kind = _zip_kind(names)
        return Sniffed(kind, DESCRIPTIONS[kind], tuple(names))
    if _safetensors_header(head, size):
        return Sniffed(SAFETENSORS, DESCRIPTIONS[SAFETENSORS])
    if head[:1] == b"\x80" and len(head) > 2:  # pickle protocol >= 2
        kind = TORCH_LEGACY if _legacy_magic(head) else PICKLE
        return Sniffed(kind, DESCRIPTIONS[kind])
    foreign = _foreign(head, path)
    if foreign:
        return Sniffed(FOREIGN, foreign)
    return Sniffed(UNKNOWN, DESCRIPTIONS[UNKNOWN])


def _legacy_magic(head: bytes) -> bool:
    """torch.save's legacy format pickles its magic number first: PROTO 2, then LONG1 of 10 bytes."""
    magic = TORCH_MAGIC.to_bytes(10, "little")
    return magic in head[:32]


def expected_suffixes(kind: str) -> tuple[str, ...]:
    """Extensions that usually carry `kind` (for a 'named .x but holds y' note)."""
    return {
        TORCH_ZIP: (".pt", ".pth", ".ckpt", ".bin", ".tar"),
        TORCH_LEGACY: (".pt", ".pth", ".ckpt", ".bin", ".tar"),
        TORCHSCRIPT: (".pt", ".pth", ".ts", ".torchscript", ".jit"),
        PROGRAM: (".pt2",),
        ARCHIVE: (".zip",),
        SAFETENSORS: (".safetensors",),
        PICKLE: (".pkl", ".pickle"),
    }.get(kind, ())


# Globals torch.save itself writes (tensor rebuilding, storages, containers): not worth naming.
_PLAIN_GLOBALS = (
    "torch._utils.",
    "torch.storage.",
    "torch.serialization.",
    "collections.OrderedDict",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.DoubleStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.Size",
    "torch.device",
    "torch.float",
    "torch.int",
    "torch.bfloat16",
    "torch.half",
    "torch.long",
    "torch.bool",
    "torch.double",
    "torch.uint8",
    "torch.int8",
    "torch.int16",
)
MAX_SCAN_BYTES = 256 * 1024**2


def pickle_globals(path: Path, kind: str) -> tuple[list[str], bool]:
    """The importable names a pickle refers to (GLOBAL / STACK_GLOBAL), read with pickletools — which
    parses opcodes and never executes anything — and whether the stream parsed cleanly. Each is named as
    pickle's unpickler resolves it (`__builtin__.eval` is `builtins.eval` below protocol 3).

    For torch.save zip files the pickle is the `data.pkl` member; legacy torch.save files are several
    pickles in a row. Names torch.save itself writes for tensors and storages are left out."""
    import io
    import pickletools

    try:
        if kind == TORCH_ZIP:
            with zipfile.ZipFile(path) as zf:
                member = next(n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                data = zf.read(member)[:MAX_SCAN_BYTES]
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_SCAN_BYTES)
    except (OSError, StopIteration, zipfile.BadZipFile, RuntimeError, ValueError):
        return [], False
    from studio.sources.pickle_scan import resolve_global

    found: list[str] = []
    stream = io.BytesIO(data)
    ok = True
    for _ in range(8):  # legacy torch.save: magic, protocol, sys info, object, storage keys
        if stream.tell() >= len(data):
            break
        strings: list = []  # the stack's recent values, enough for STACK_GLOBAL's two names
        memo: dict = {}
        proto = 0
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name == "PROTO":
                    proto = arg if isinstance(arg, int) else proto
                elif name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                    memo[len(memo) if name == "MEMOIZE" else arg] = strings[-1] if strings else None
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(arg))
                elif name == "GLOBAL" and isinstance(arg, str) and " " in arg:
                    # named as the unpickler resolves it (Python 2 names: __builtin__ is builtins)
                    module, _, attr = arg.partition(" ")
                    found.append(resolve_global(module, attr, proto))
                    strings.append(None)
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    module, attr = strings[-2], strings[-1]
                    if isinstance(module, str) and isinstance(attr, str):
                        found.append(resolve_global(module, attr, proto))
                    strings.append(None)
                elif name not in ("FRAME",):
                    strings.append(None)
                del strings[:-2]
        except Exception:  # noqa: BLE001 - hostile bytes: any way pickletools fails means "not a readable pickle"
            ok = False
            break
        if kind not in (TORCH_LEGACY,):
            break
    names = [n for n in dict.fromkeys(found) if not n.startswith(_PLAIN_GLOBALS)]
    return names, ok
