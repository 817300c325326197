"""The functions an ELF file defines, as `cc` resolves and `update` writes the link order: each
function's exact symbol, address, size and name without hash (`nm -C`, whose lines pair up with
plain `nm`'s one for one)."""

import subprocess


class NmError(Exception):
    pass


def functions(path):
    """[(exact symbol, address, size, name without hash)] of the functions `path` defines."""
    raw = subprocess.run(["nm", "-S", "--defined-only", path], capture_output=True, text=True)
    demangled = subprocess.run(["nm", "-S", "-C", "--defined-only", path], capture_output=True, text=True)
    if raw.returncode or demangled.returncode:
        raise NmError(f"nm {path}: {raw.stderr.strip() or demangled.stderr.strip()}")
    out = []
    for line, name_line in zip(raw.stdout.splitlines(), demangled.stdout.splitlines()):
        fields, name = line.split(" ", 3), name_line.split(" ", 3)
        # Sized functions only: `nm -S` omits the size of a symbol that has none.
        if len(fields) == 4 and len(name) == 4 and fields[2] in "tTwW":
            out.append((fields[3], int(fields[0], 16), int(fields[1], 16), name[3]))
    return out
