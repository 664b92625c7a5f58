"""Hand-made .npy members and .npz archives (hostile headers, sizes, dtypes) for the predictions reader."""
import struct
import zipfile


def npy(shape_text, dtype="<f8", data=b""):
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape_text}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npz(path, members, compression=zipfile.ZIP_STORED):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, raw in members.items():
            zf.writestr(name + ".npy", raw)
