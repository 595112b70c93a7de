"""Recognise a TorchScript archive by its layout, before torch ever reads it.

``torch.jit.load`` on a hostile or merely wrong file can allocate without
bound or crash the process, and its errors ("PytorchStreamReader failed
locating file constants.pkl") do not tell a user what to do.  These checks
read only the zip directory, so the API (which never imports torch) can run
them on every upload and give a clear message.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kegnet_core.errors import InvalidModelFileError

PICKLE_PROTOCOL_MARK = b"\x80"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that stop zip bombs: total unpacked size and per-entry ratio."""

    max_uncompressed_bytes: int = 4 * 1024**3
    max_compression_ratio: float = 200.0
    max_entries: int = 100_000


@dataclass(frozen=True)
class ArchiveInfo:
    """What the directory of a valid TorchScript archive told us."""

    root: str
    entries: int
    uncompressed_bytes: int


def _describe_non_zip(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if head.startswith(PICKLE_PROTOCOL_MARK):
        return (
            "this is a Python pickle (an old-style torch.save file), not TorchScript; "
            "save the model with torch.jit.script(model).save(path) or torch.jit.trace"
        )
    if head.startswith(b"PK"):
        return "the zip archive is truncated or corrupt"
    return "the file is not a zip archive"


def inspect_torchscript_archive(
    source: str | Path | BinaryIO, limits: ArchiveLimits | None = None
) -> ArchiveInfo:
    """Check that ``source`` has the TorchScript zip layout; raise otherwise.

    A TorchScript archive is a zip with one top folder holding ``data.pkl``,
    ``constants.pkl`` and compiled ``code/``.  A ``torch.save`` checkpoint has
    ``data.pkl`` but no ``code/``: that is the most common mistake, so it gets
    its own message.
    """
    limits = limits or ArchiveLimits()
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return inspect_torchscript_archive(handle, limits)
    start = source.tell()
    head = source.read(4)
    source.seek(start)
    if head != ZIP_MAGIC:
        raise InvalidModelFileError(
            f"expected a TorchScript archive: {_describe_non_zip(head)}", field="model"
        )
    try:
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidModelFileError(
            f"expected a TorchScript archive: the zip archive is truncated or corrupt ({exc})",
            field="model",
        ) from exc
    finally:
        source.seek(start)
    if not infos:
        raise InvalidModelFileError("expected a TorchScript archive: the zip is empty", field="model")
    if len(infos) > limits.max_entries:
        raise InvalidModelFileError(
            f"the archive has {len(infos)} entries, more than the limit of {limits.max_entries}",
            field="model",
        )
    total = 0
    for info in infos:
        total += info.file_size
        if info.compress_size > 0 and info.file_size / info.compress_size > limits.max_compression_ratio:
            raise InvalidModelFileError(
                f"archive entry {info.filename!r} expands {info.file_size / info.compress_size:.0f}x; "
                "refusing a likely zip bomb",
                field="model",
            )
    if total > limits.max_uncompressed_bytes:
        raise InvalidModelFileError(
            f"the archive unpacks to {total} bytes, more than the limit of {limits.max_uncompressed_bytes}",
            field="model",
        )
    names = [info.filename for info in infos]
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1:
        raise InvalidModelFileError(
            "expected a TorchScript archive: entries are not under one top folder", field="model"
        )
    root = roots.pop()
    has = set(names)
    has_code = any(name.startswith(f"{root}/code/") for name in names)
    if f"{root}/data.pkl" in has and not has_code:
        raise InvalidModelFileError(
            "expected a TorchScript archive, got a torch.save checkpoint (a state dict or "
            "pickled module); save the model with torch.jit.script(model).save(path) "
            "or torch.jit.trace(model, example).save(path)",
            field="model",
        )
    if not has_code or f"{root}/data.pkl" not in has or f"{root}/constants.pkl" not in has:
        raise InvalidModelFileError(
            "expected a TorchScript archive: the zip lacks data.pkl, constants.pkl or code/",
            field="model",
        )
    return ArchiveInfo(root=root, entries=len(infos), uncompressed_bytes=total)
