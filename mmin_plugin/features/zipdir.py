"""Zip directories checked and charged before ``zipfile`` reads them (imports neither torch nor MMSA).

``zipfile.ZipFile(f)`` reads the whole central directory into memory and makes one ``ZipInfo``
per record before a caller sees a single name: a 53 MB ``.npz`` holding 1M empty records took
+505 MB and 5.7 s (issue 25).  :func:`open_zip` first reads the end-of-central-directory record
(with zipfile's own reader, so both see the same directory), refuses a directory with more
records than the file can hold for the format (:data:`~mmin_plugin.features.limits.ZIP_ENTRY_MIN`
bytes each) and charges the directory's bytes plus
:data:`~mmin_plugin.features.limits.ZIP_ENTRY` per possible record (a record is at least 46
bytes) to the load's byte budget.

:func:`check_checkpoint_records` is what ``explain`` checks before ``torch.load``: torch's reader
inflates a deflate-compressed record (390 KB became a 400 MB tensor) before any shape can be
compared, so every record must be stored, of a name ``torch.save`` writes, and no larger than the
tensors the configuration implies.
"""
from __future__ import annotations

import io
import re
import zipfile

from ..errors import MMINError
from .limits import ZIP_ENTRY, ZIP_ENTRY_MIN, Budget, Refused, default_max_bytes

__all__ = ["open_zip", "check_checkpoint_records", "CENTRAL_RECORD"]

#: Bytes of a central-directory record without its name and extra fields.
CENTRAL_RECORD = 46


def _file_size(f) -> int:
    here = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(here)
    return size


def open_zip(f, budget: Budget, min_entry: int = ZIP_ENTRY_MIN) -> zipfile.ZipFile:
    """``zipfile.ZipFile(f)`` (seekable binary `f`) once its central directory is checked: at most
    one record per `min_entry` bytes of the file, and its bytes plus ``ZIP_ENTRY`` per record it can
    hold charged to `budget` (:class:`Refused` otherwise, naming the counts and the offset)."""
    size = _file_size(f)
    end = zipfile._EndRecData(f)  # what ZipFile itself reads first (the EOCD, zip64 included)
    if end is None:
        raise Refused("no end-of-central-directory record (not a zip file)")
    entries, cd_size, cd_offset = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    most = size // min_entry + 1
    can_hold = cd_size // CENTRAL_RECORD
    if cd_size > size or max(entries, can_hold) > most:
        raise Refused(f"a zip central directory at byte {cd_offset} of {cd_size} bytes claiming {entries} records "
                      f"(room for {can_hold}) in a file of {size} bytes: at most {most} are accepted (one per "
                      f"{min_entry} bytes; zipfile would build every record before any is checked)")
    budget.charge(cd_size + ZIP_ENTRY * can_hold, f"the zip central directory at byte {cd_offset} "
                  f"({cd_size} bytes, up to {can_hold} records)")
    return zipfile.ZipFile(f)


# --- torch.save checkpoints ---------------------------------------------------------------------
#: Records torch.save writes besides data.pkl and the tensor storages (each a few bytes).
_SMALL_RECORDS = {"version", ".format_version", ".storage_alignment", "byteorder", ".data/version",
                  ".data/serialization_id"}
_SMALL_MAX = 1024
_STORAGE = re.compile(r"data/\d{1,9}")
#: data.pkl: a fixed part plus, per tensor, its name and the rebuild call (about 150 bytes).
_PICKLE_BASE, _PICKLE_PER_TENSOR = 64 << 10, 1024
#: Largest element a checkpoint's tensor may use (float64); MMIN trains in float32.
_MAX_ITEMSIZE = 8


def check_checkpoint_records(path, tensor_numels) -> None:
    """Refuse (:class:`MMINError` naming the file, the record and what was wrong) a ``torch.save``
    zip whose directory does not fit the tensors the configuration implies, before ``torch.load``
    reads anything: `tensor_numels` are the element counts of the expected tensors.  Every record
    must be stored uncompressed under one prefix and be ``data.pkl`` (at most 64 KiB + 1 KiB per
    tensor), a storage ``data/N`` (at most as many as tensors, each no larger than the largest
    tensor at 8 bytes per element, together no larger than all of them at 8 bytes) or one of
    torch's small records."""
    numels = [int(n) for n in tensor_numels]
    largest, total = _MAX_ITEMSIZE * max(numels, default=0), _MAX_ITEMSIZE * sum(numels)
    pickle_max = _PICKLE_BASE + _PICKLE_PER_TENSOR * len(numels)
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise Refused("not a zip archive (torch.save writes one; the legacy format allocates the sizes "
                              "it declares before reading them)")
            f.seek(0)
            size = _file_size(f)
            with open_zip(f, Budget(default_max_bytes(size)), min_entry=64) as zf:
                infos = zf.infolist()
    except (Refused, zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise MMINError(f"{path}: expected a checkpoint written by torch.save (a zip of stored records); found "
                        f"{type(e).__name__ if not isinstance(e, Refused) else 'that it has'} {str(e)[:300]}") from None
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    storages, stored = 0, 0
    for info in infos:
        name = info.filename
        rest = name.split("/", 1)[1] if "/" in name else ""

        def refuse(what, name=name, info=info):
            raise MMINError(f"{path}: refusing the checkpoint before torch.load: member {name!r:.120} at byte "
                            f"{info.header_offset}: {what}")

        if len(prefixes) != 1:
            refuse(f"records under {len(prefixes)} different top folders (torch.save writes one)")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            refuse(f"a compressed record ({info.compress_size} bytes stored, {info.file_size} uncompressed; "
                   "torch.save stores records uncompressed, and torch.load would inflate it before any check)")
        if rest == "data.pkl":
            limit = pickle_max
        elif _STORAGE.fullmatch(rest):
            storages += 1
            stored += info.file_size
            if storages > len(numels):
                refuse(f"more tensor storages than the {len(numels)} tensors the config implies")
            limit = largest
        elif rest in _SMALL_RECORDS:
            limit = _SMALL_MAX
        else:
            refuse("a record torch.save does not write")
        if info.file_size > limit:
            refuse(f"{info.file_size} bytes (at most {limit} for the tensors the config implies: the largest has "
                   f"{max(numels, default=0)} elements, at most {_MAX_ITEMSIZE} bytes each)")
        if stored > total:
            refuse(f"tensor storages of {stored} bytes in all (at most {total}: {sum(numels)} elements at "
                   f"{_MAX_ITEMSIZE} bytes)")
