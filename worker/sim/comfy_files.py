"""Files of the simulated ComfyUI: its folders, uploads, ``/view``, output names and fake media bytes.

Naming follows ComfyUI 0.3.64 and its packs: ``SaveImage`` writes ``<prefix>_00001_.png`` (counter from
the files already on disk), VideoHelperSuite writes ``<prefix>_00001.mp4`` plus a metadata
``<prefix>_00001.png``. Media bytes are fake but well-formed at the start (PNG is a real image; MP4 is an
``ftyp`` box and an ``mdat`` box of deterministic pseudo-random bytes). Video files are produced and
written in chunks, so a 1 GiB ``--output-size`` never sits whole in the simulator's memory.
"""
from __future__ import annotations

import hashlib
import mimetypes
import os
import random
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/mp4", ".mp4")

_FORCE_DOWNLOAD = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
_FTYP = bytes.fromhex("000000206674797069736f6d0000020069736f6d69736f32617663316d703431")
_WEBM_HEAD = bytes.fromhex("1a45dfa3" "87" "4282" "84") + b"webm" + bytes.fromhex("18538067" "01ffffffffffffff")
CHUNK = 1 << 20  # a multiple of 4: chunked pseudo-random bytes equal the one-piece ones


@dataclass(frozen=True)
class Dirs:
    """The absolute input, output and temp folders of one server."""

    input: str
    output: str
    temp: str

    def by_type(self, kind: str | None) -> str | None:
        """The folder for an ``input``/``output``/``temp`` type name, None for anything else."""
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind or "")


def prepare_dirs(input_dir: str | None, output_dir: str | None, temp_dir: str | None,
                 base_dir: str | None = None) -> Dirs:
    """Create the folders; ``X/temp`` is wiped, as ComfyUI does.

    Folders not given live under ``base_dir`` (``--base-directory``), else under a fresh temp folder.
    """
    base = base_dir
    if base is None and not (input_dir and output_dir and temp_dir):
        base = tempfile.mkdtemp(prefix="comfyui-sim-")
    dirs = Dirs(input=os.path.abspath(input_dir or os.path.join(base, "input")),
                output=os.path.abspath(output_dir or os.path.join(base, "output")),
                temp=os.path.abspath(os.path.join(temp_dir or base, "temp")))
    shutil.rmtree(dirs.temp, ignore_errors=True)
    for path in (dirs.input, dirs.output, dirs.temp):
        os.makedirs(path, exist_ok=True)
    return dirs


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """Split ComfyUI's ``"name.png [output]"`` annotation into (name, type) ; type None when absent."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def exists_annotated_filepath(name: str, dirs: Dirs) -> bool:
    """LoadImage's validation: does the (possibly annotated) image name exist?"""
    return os.path.exists(annotated_path(name, dirs))


def annotated_path(name: str, dirs: Dirs) -> str:
    """The file an (annotated) LoadImage name refers to; plain names live in the input folder."""
    plain, kind = annotated_filepath(name)
    return os.path.join(dirs.by_type(kind) or dirs.input, plain)


# ---------------------------------------------------------------- media bytes

def png_bytes(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A valid solid-colour RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def random_chunks(count: int, seed: str) -> Iterator[bytes]:
    """``count`` pseudo-random bytes seeded by ``seed``, in pieces of at most :data:`CHUNK`."""
    rng = random.Random(seed)
    while count > 0:
        piece = min(CHUNK, count)
        yield rng.randbytes(piece)
        count -= piece


def mp4_chunks(size: int, seed: str) -> Iterator[bytes]:
    """``size`` bytes: an ``ftyp`` box, then one ``mdat`` box of pseudo-random bytes seeded by ``seed``."""
    size = max(size, len(_FTYP) + 8)
    yield _FTYP + struct.pack(">I", size - len(_FTYP)) + b"mdat"
    yield from random_chunks(size - len(_FTYP) - 8, seed)


def mp4_bytes(size: int, seed: str) -> bytes:
    """:func:`mp4_chunks` in one piece (small files only)."""
    return b"".join(mp4_chunks(size, seed))


def webm_chunks(size: int, seed: str) -> Iterator[bytes]:
    """An EBML header (DocType ``webm``) and an open-ended Segment, then pseudo-random bytes."""
    size = max(size, len(_WEBM_HEAD))
    yield _WEBM_HEAD
    yield from random_chunks(size - len(_WEBM_HEAD), seed)


def webp_bytes(size: int, seed: str) -> bytes:
    """A RIFF/WEBP container header followed by pseudo-random bytes (not decodable)."""
    size = max(size, 20)
    body = random.Random(seed).randbytes(size - 20)
    return b"RIFF" + struct.pack("<I", size - 8) + b"WEBPVP8 " + struct.pack("<I", size - 20) + body


# ---------------------------------------------------------------- output names

def save_image_path(prefix: str, root: str) -> tuple[str, str, int, str]:
    """ComfyUI's ``get_save_image_path``: (folder, base name, next counter, subfolder) for ``prefix``."""
    subfolder = os.path.dirname(os.path.normpath(prefix))
    base = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(root, subfolder)
    if os.path.commonpath((root, os.path.abspath(folder))) != root:
        raise ValueError(f"**** ERROR: Saving image outside the output folder is not allowed.\n"
                         f" full_output_folder: {os.path.abspath(folder)}\n output_dir: {root}")
    os.makedirs(folder, exist_ok=True)
    counters = [_comfy_counter(name, base) for name in os.listdir(folder)]
    return folder, base, max([c for c in counters if c is not None], default=0) + 1, subfolder


def _comfy_counter(name: str, base: str) -> int | None:
    """The counter of ``<base>_00007_...`` files, None for other names."""
    prefix = name[: len(base) + 1]
    if os.path.normcase(prefix[:-1]) != os.path.normcase(base) or prefix[-1:] != "_":
        return None
    try:
        return int(name[len(base) + 1:].split("_")[0])
    except ValueError:
        return 0


def vhs_counter(folder: str, base: str) -> int:
    """VideoHelperSuite's counter: one more than the largest ``<base>_<n>...`` file in ``folder``."""
    matcher = re.compile(f"{re.escape(base)}_(\\d+)\\D*\\..+", re.IGNORECASE)
    found = [int(m.group(1)) for m in map(matcher.fullmatch, os.listdir(folder)) if m]
    return max(found, default=0) + 1


@dataclass
class FileLog:
    """Every output file the simulator wrote, for ``GET /sim/state``."""

    entries: list[dict] = field(default_factory=list)

    def write(self, path: str, data: bytes | Iterable[bytes], kind: str, dirs: Dirs) -> None:
        """Write ``data`` (bytes, or chunks written one by one) to ``path``; remember its size and sha256."""
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as handle:
            for chunk in ([data] if isinstance(data, bytes) else data):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        root = dirs.by_type(kind) or dirs.output
        self.entries.append({"type": kind, "path": os.path.relpath(path, root), "size": size,
                             "sha256": digest.hexdigest()})


# ---------------------------------------------------------------- /view and /upload/image

def view_target(dirs: Dirs, query: dict) -> tuple[int, str | None]:
    """ComfyUI's ``/view`` rules: (status, file path); the path is set only for 200."""
    if "filename" not in query:
        return 404, None
    filename, kind = annotated_filepath(query["filename"])
    if not filename:
        return 400, None
    if filename[0] == "/" or ".." in filename:
        return 400, None
    folder = dirs.by_type(kind or query.get("type", "output"))
    if folder is None:
        return 400, None
    if "subfolder" in query:
        full = os.path.join(folder, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), folder)) != folder:
            return 403, None
        folder = full
    path = os.path.join(folder, os.path.basename(filename))
    return (200, path) if os.path.isfile(path) else (404, None)


def view_headers(path: str) -> dict[str, str]:
    """Content-Type (by extension, HTML-like types forced to download) and Content-Disposition."""
    name = os.path.basename(path)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type in _FORCE_DOWNLOAD:
        content_type = "application/octet-stream"
    return {"Content-Disposition": f'filename="{name}"', "Content-Type": content_type}


def store_upload(dirs: Dirs, post: dict) -> tuple[int, dict | None]:
    """ComfyUI's ``image_upload``: (status, JSON body); raises where ComfyUI answers 500.

    ``post`` is aiohttp's multipart form. The ``image`` part must be a file part; without ``overwrite``
    ("true" or "1") an existing name with other bytes becomes ``name (1).ext``, ``name (2).ext``...,
    and identical bytes reuse the existing name without writing.
    """
    image = post.get("image")
    kind = post.get("type") or "input"
    folder = dirs.by_type(kind)
    if folder is None:
        raise ValueError(f"cannot access local variable 'type_dir' (type {kind!r})")
    if not (image and image.file):  # a plain field has no .file: AttributeError -> 500, as in ComfyUI
        return 400, None
    data = image.file.read()
    return _store_bytes(folder, kind, post, image.filename, data)


def _store_bytes(root: str, kind: str, post: dict, filename: str, data: bytes) -> tuple[int, dict | None]:
    if not filename:
        return 400, None
    subfolder = post.get("subfolder", "")
    folder = os.path.join(root, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((root, path)) != root:
        return 400, None
    os.makedirs(folder, exist_ok=True)
    if post.get("overwrite") not in ("true", "1"):
        filename, path, duplicate = _free_name(folder, filename, path, data)
        if duplicate:
            return 200, {"name": filename, "subfolder": subfolder, "type": kind}
    with open(path, "wb") as handle:
        handle.write(data)
    return 200, {"name": filename, "subfolder": subfolder, "type": kind}


def _free_name(folder: str, filename: str, path: str, data: bytes) -> tuple[str, str, bool]:
    """Walk ``name``, ``name (1)``... until a free name or one holding identical bytes."""
    stem, ext = os.path.splitext(filename)
    digest = hashlib.sha256(data).digest()
    i = 1
    while os.path.exists(path):
        with open(path, "rb") as handle:
            if hashlib.sha256(handle.read()).digest() == digest:
                return filename, path, True
        filename = f"{stem} ({i}){ext}"
        path = os.path.join(folder, filename)
        i += 1
    return filename, path, False


def file_sha256(path: str) -> str | None:
    """sha256 of a file (LoadImage's IS_CHANGED), None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def input_dir_files(input_dir: str) -> list[str]:
    """LoadImage's choice list: the files directly in the input folder, sorted."""
    try:
        return sorted(f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f)))
    except FileNotFoundError:
        return []
