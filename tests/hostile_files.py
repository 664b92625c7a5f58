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
