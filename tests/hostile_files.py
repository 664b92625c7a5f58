"""Hostile feature files built opcode by opcode from the globals the safe loader allows.

Each builder returns the bytes of a pickle that broke the previous (allow-list only) loader;
:data:`HOSTILE` names them for parametrised tests.  Written by hand (not with ``pickle.dumps``)
because an attacker writes opcodes, not objects.
"""
import struct

PROTO = b"\x80\x03"


def G(module, name):
    """GLOBAL module.name"""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(s):
    """a str (BINUNICODE)"""
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def B(data):
    """bytes (BINBYTES, protocol 3)"""
    return b"B" + struct.pack("<I", len(data)) + data


def I(n):  # noqa: E743  (an opcode name)
    """an int (BININT, or LONG1 when large)"""
    if -(2 ** 31) <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def T(*items):
    """a tuple of the given opcode strings"""
    return b"(" + b"".join(items) + b"t"


N, TRUE, FALSE, REDUCE, BUILD, STOP = b"N", b"\x88", b"\x89", b"R", b"b", b"."


def call(fn, *args):
    return fn + T(*args) + REDUCE


def feature_dict(value, key="id"):
    """{'train': {key: value}, 'valid': <same>, 'test': <same>} around one hostile value."""
    inner = b"}q\x00" + S(key) + value + b"s"  # the split dict, memo 0
    return PROTO + b"}(" + S("train") + inner + S("valid") + b"h\x00" + S("test") + b"h\x00" + b"u" + STOP


def dtype(spec, state):
    return call(G("numpy", "dtype"), S(spec), FALSE, TRUE) + state + BUILD


def array(dtype_ops, shape, data_ops, reconstruct="numpy.core.multiarray"):
    head = call(G(reconstruct, "_reconstruct"), G("numpy", "ndarray"), T(I(0)), B(b"b"))
    return head + T(I(1), T(*[I(s) for s in shape]), dtype_ops, FALSE, data_ops) + BUILD


def forged_object_dtype():
    """dtype('O') whose BUILD state clears the object flags, then 8 raw bytes as a PyObject*."""
    forged = dtype("O8", T(I(3), S("|"), N, N, N, I(-1), I(-1), I(0)))
    return feature_dict(array(forged, (1,), B(b"A" * 8)))


def forged_structured_dtype():
    """a structured dtype with two object fields (dereferenced by OrderedDict(arr) before)."""
    obj = dtype("O8", T(I(3), S("|"), N, N, N, I(-1), I(-1), I(63)))
    fields = b"}" + S("a") + T(obj, I(0)) + b"s" + S("b") + T(obj, I(8)) + b"s"
    forged = dtype("V16", T(I(3), S("|"), N, T(S("a"), S("b")), fields, I(16), I(1), I(0)))
    return feature_dict(array(forged, (1,), B(b"A" * 16)))


def zero_stride_array():
    """numpy.ndarray((16, 10**6, 10**6), 'f8', bytes(8), 0, (0, 0, 0)): 8 bytes claiming 1.6e13 values."""
    f8 = dtype("f8", T(I(3), S("<"), N, N, N, I(-1), I(-1), I(0)))
    return feature_dict(call(G("numpy", "ndarray"), T(I(16), I(10 ** 6), I(10 ** 6)), f8, B(bytes(8)), I(0),
                             T(I(0), I(0), I(0))), key="audio")


def reduce_giant_array():
    """numpy.ndarray((16, 10**7, 5), 'f4') by REDUCE: ~100 bytes asking for 3.2 GB."""
    return feature_dict(call(G("numpy", "ndarray"), T(I(16), I(10 ** 7), I(5)), S("f4")), key="audio")


def reconstruct_short_data():
    """_reconstruct + BUILD claiming shape (16, 10**7, 5) float32 with 8 bytes of data."""
    f4 = dtype("f4", T(I(3), S("<"), N, N, N, I(-1), I(-1), I(0)))
    return feature_dict(array(f4, (16, 10 ** 7, 5), B(bytes(8))), key="audio")


def memo_reference_bomb(width=1000, levels=4):
    """labels = ([0]*width, [L1]*width, ..., [L(levels-1)]*width): a few KB expanding to
    width**levels elements."""
    ops = b"(]q\x01(" + b"K\x00" * width + b"e"  # list 1: [0]*width, memo 1
    for level in range(2, levels + 1):
        ops += b"]" + b"r" + struct.pack("<I", level) + b"(" + (b"j" + struct.pack("<I", level - 1)) * width + b"e"
    return feature_dict(ops + b"t", key="regression_labels")


def deep_frozensets(depth=20000):
    """a split nested `depth` frozensets deep (RecursionError in repr before; sets are refused now)."""
    return b"\x80\x04" + b"(" * depth + b"\x91" * depth + STOP


def deep_lists(depth=20000):
    """lists nested `depth` deep, each appended to the one below it."""
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + STOP


def codecs_lookup():
    """_codecs.encode('x', 'os.path'): a LookupError out of the old loader."""
    return feature_dict(call(G("_codecs", "encode"), S("x"), S("os.path")))


def build_on_function():
    """BUILD with slot state on an allowed function: sets _codecs.encode.__defaults__ process-wide."""
    return PROTO + G("_codecs", "encode") + T(N, b"}" + S("__defaults__") + T(S("evil")) + b"s") + BUILD + STOP


def mutate_after_insert():
    """L0 = []; L1 = [L0] * 1000; then 1000 items appended to L0 through the memo (filled in later)."""
    ops = PROTO + b"]q\x00" + b"](" + b"h\x00" * 1000 + b"e" + b"h\x00(" + b"K\x00" * 1000 + b"e" + STOP
    return ops


def hash_collision_dict(n=20000):
    """a dict whose int keys k * (2**61 - 1) all hash alike: quadratic inserts (10 s for 40k keys before)."""
    return feature_dict(b"}(" + b"".join(I(k * (2 ** 61 - 1)) + b"K\x00" for k in range(1, n + 1)) + b"u")


def hash_collision_set(n=20000):
    """the same keys in a set (EMPTY_SET + ADDITEMS)."""
    return feature_dict(b"\x8f(" + b"".join(I(k * (2 ** 61 - 1)) for k in range(1, n + 1)) + b"\x90")


def mark_bomb(n):
    """n MARKs, each over one more int: stack and mark list grow, nothing else is made."""
    return PROTO + b"(K\x00" * n + b"N" + STOP


def dup_bomb(n):
    """DUP n times: n references to one value on the stack."""
    return PROTO + b"N" + b"2" * n + STOP


HOSTILE = {
    "forged_object_dtype": forged_object_dtype,
    "forged_structured_dtype": forged_structured_dtype,
    "zero_stride_array": zero_stride_array,
    "reduce_giant_array": reduce_giant_array,
    "reconstruct_short_data": reconstruct_short_data,
    "memo_reference_bomb": memo_reference_bomb,
    "deep_frozensets": deep_frozensets,
    "deep_lists": deep_lists,
    "codecs_lookup": codecs_lookup,
    "build_on_function": build_on_function,
    "mutate_after_insert": mutate_after_insert,
    "hash_collision_dict": hash_collision_dict,
    "hash_collision_set": hash_collision_set,
}


# --- issue 25: shared references that explode, floods that cost time, zero-size giants ----------------
def fanout_bomb(width=90, levels=4):
    """Four levels of lists, each holding `width` memo references (BINGET) to the level below: under
    a KB, expanding to width**levels (65.6M) elements.  The VM keeps the sharing; a copy that does
    not (the parse cache's, JSON, np.asarray) materialised 4.6 GB, just under the old limit, which
    compared an element count with the byte budget."""
    ops = b"]q\x00(" + b"K\x00" * width + b"e"  # level 1: [0] * width, memo 0
    for level in range(1, levels):  # level + 1: [level] * width, memo `level`
        ops += b"]q" + bytes([level]) + b"(" + (b"h" + bytes([level - 1])) * width + b"e"
    return PROTO + b"(" + ops + b"t" + STOP  # the levels in one tuple


def _plain_body(obj):
    """The opcodes of `obj` without PROTO, STOP or any memo opcode (fast mode: no memo), protocol 3,
    so they can be spliced into a hand-written pickle that uses the memo itself."""
    import io
    import pickle

    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=3)
    p.fast = True
    p.dump(obj)
    return buf.getvalue()[2:-1]


def mmsa_split(n=4, seed=0):
    """A small MMSA-Standard split (NumPy only): what a valid feature file holds per split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    text = np.stack([rng.integers(1, 100, (n, 6)), np.ones((n, 6)), np.zeros((n, 6))], 1)  # ids, mask, segments
    return {"text_bert": text.astype(np.float32),
            "audio": rng.standard_normal((n, 8, 5)).astype(np.float32),
            "vision": rng.standard_normal((n, 7, 20)).astype(np.float32),
            "audio_lengths": [8] * n, "vision_lengths": [7] * n,
            "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
            "id": np.array([f"v{i}$_$0" for i in range(n)], dtype=object),
            "raw_text": np.array(["a b c"] * n, dtype=object)}


def mmsa_with_fanout(n=4, width=90, levels=4, key="annotations"):
    """A valid MMSA file whose train split also holds the fan-out bomb under `key` (MMSA ignores the
    key; the copy the parse cache hands out expanded it: 33 s and a MemoryError in `run -m mmin`)."""
    bomb = fanout_bomb(width, levels)[len(PROTO):-1]
    splits = b"".join(S(name) + _plain_body(mmsa_split(n, seed=i))[:-1] + (S(key) + bomb if name == "train" else b"")
                      + b"u" for i, name in enumerate(("train", "valid", "test")))  # in the split's SETITEMS
    return PROTO + b"}(" + splits + b"u" + STOP


def proto_flood(n):
    """`n` PROTO opcodes (2 bytes each) before a None: no memory, one opcode per 2 bytes."""
    return b"\x80\x04" * n + b"N" + STOP


def frame_flood(n):
    """`n` empty FRAMEs (9 bytes each) before a None."""
    return b"\x80\x04" + (b"\x95" + struct.pack("<Q", 0)) * n + b"N" + STOP


def zero_size_giant(n=2, side=2 ** 26):
    """A valid MMSA file whose audio has shape (n, 0, side): no bytes, but MMSA's normalisation (a
    mean over the empty axis) allocates n * side floats (2-16 GiB)."""
    import pickle

    import numpy as np

    data = {s: mmsa_split(n) for s in ("train", "valid", "test")}
    data["train"]["audio"] = np.zeros((n, 0, side), np.float32)
    return pickle.dumps(data, protocol=4)


def with_unnamed_zip_entries(zip_bytes, n):
    """`zip_bytes` (a zip) with `n` extra central-directory records (empty stored files named
    x0000000..., all pointing at the first member, so no local data is added): 53 bytes each.  zipfile
    builds a ZipInfo for each before any name can be checked."""
    import zipfile as zf

    end = zip_bytes.rfind(b"PK\x05\x06")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", zip_bytes[end:end + 22])
    if zip_bytes.rfind(b"PK\x06\x06") >= 0 or count == 0xFFFF:
        raise ValueError("expected a plain (not zip64) directory to extend")
    head, cd = zip_bytes[:cd_offset], zip_bytes[cd_offset:cd_offset + cd_size]
    crc = zf.crc32(b"")
    extra = b"".join(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 0, 0, 7, 0, 0, 0, 0, 0, 0)
                     + b"x%06d" % i for i in range(n))
    cd += extra
    total = count + n
    out = head + cd
    zip64_end = len(out)
    out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, len(cd), cd_offset)
    out += struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_end, 1)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return out


def deflated_records(zip_bytes, grow=None):
    """A torch.save zip rewritten with every ``data/N`` record deflate-compressed; with `grow`
    (bytes), the first storage record is replaced by that many zero bytes (compressing ~1000x):
    torch.load inflates it before the shape check could run."""
    import io
    import zipfile as zf

    src, buf, grown = zf.ZipFile(io.BytesIO(zip_bytes)), io.BytesIO(), False
    with zf.ZipFile(buf, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename and info.filename.rsplit("/", 1)[1].isdigit():
                if grow and not grown:
                    data, grown = bytes(grow), True
                out.writestr(info.filename, data, compress_type=zf.ZIP_DEFLATED)
            else:
                out.writestr(info.filename, data)
    return buf.getvalue()


def np_str_object_arrays(n=8):
    """A legitimate MMSA file whose `id`/`raw_text` object arrays hold np.str_ (what
    ``np.array(list(u_array), dtype=object)`` gives): pickle.load and MMSA read it."""
    import pickle

    import numpy as np

    data = {s: mmsa_split(n) for s in ("train", "valid", "test")}
    for split in data.values():
        split["id"] = np.array(list(np.array([f"v{i}$_$0" for i in range(n)])), dtype=object)
        split["raw_text"] = np.array(list(np.array(["a b", "c"] * (n // 2))), dtype=object)
    return pickle.dumps(data, protocol=4)


def lists_of_labels_and_ids(n=300_000):
    """A legitimate file with labels and ids as Python lists, `n` entries in all over the three
    splits (7 MB for 300k): it loaded and converted, but the converted file was refused (about
    450 B charged per JSON float)."""
    import pickle

    k = n // 3
    return pickle.dumps({s: {"regression_labels": [((i % 61) - 30) / 10 + j for i in range(k)],
                             "id": [f"v{i}$_${j}" for i in range(k)]}
                         for j, s in enumerate(("train", "valid", "test"))}, protocol=4)


HOSTILE.update({
    "fanout_bomb": fanout_bomb,
    "mmsa_with_fanout": mmsa_with_fanout,
    "proto_flood": lambda: proto_flood(100_000),
    "frame_flood": lambda: frame_flood(10_000),
    "zero_size_giant": zero_size_giant,
})
