"""The xp rule: compute code never calls NumPy functions on tensor data.

NumPy on the host and CuPy on the GPU share one code path only if compute modules get their
array module from the data (``xp = get_array_module(x)``). This test reads the source of every
compute module and fails on any ``np.<function>(`` call that is not a dtype or constant, unless
the line says why it is host-side data with a ``# host:`` comment. backend.py (and the strict
emulation it owns) is where NumPy and CuPy meet, so it is exempt; so are the host-only parts
(tokenizer, data preparation, file formats), which never touch tensor data, and the bit-level
float16 casts of amp/formats.py, which run on host arrays only.
"""
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "minillm"
EXEMPT = {"backend.py", "_strict.py", "serialization.py", "fileio.py",
          # Hugging Face files: weights are read, converted and written on the host (before any device move)
          "nn/pretrained.py",
          # host execution: its helpers run only on host arrays (they check type(a) is np.ndarray)
          "host.py",
          # the formats' bit manipulation: the fast float16 casts run on host arrays only (cast()
          # hands every other array to astype); the bfloat16 bit arithmetic takes xp from its data
          "amp/formats.py",
          # gradcheck copies every array to the host (backend.to_numpy) before it compares
          "debug/gradcheck.py",
          # SFT/DPO batches are built on the host, like minillm/data's loaders
          "posttrain/batches.py",
          # the doctor's checks run on the CPU and compare arrays copied to the host (to_numpy)
          "doctor.py"}
EXEMPT_DIRS = {"tokenizer", "data"}
ALLOWED = re.compile(r"np\.(dtype|float16|float32|float64|longdouble|int8|int16|int32|int64|uint8|"
                     r"uint16|uint32|uint64|bool_|iinfo|finfo|errstate|printoptions|"
                     r"set_printoptions|issubdtype)\(")
CALL = re.compile(r"\bnp\.[a-zA-Z_][a-zA-Z_0-9.]*\(")


def compute_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.as_posix() in EXEMPT:
            continue
        if relative.parts[0] in EXEMPT_DIRS:
            continue
        yield path


def test_no_numpy_calls_on_tensor_data_outside_backend():
    offences = []
    for path in compute_modules():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for call in CALL.finditer(code):
                if ALLOWED.match(call.group(0)) or "# host:" in line:
                    continue
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offences, "NumPy calls on tensor data (use xp = get_array_module(x)):\n" + "\n".join(offences)


def test_the_rule_catches_an_offence(tmp_path):
    line = "    y = np.exp(x)\n"
    assert CALL.search(line) and not ALLOWED.match(CALL.search(line).group(0))
    assert ALLOWED.match("np.float32(")


def test_only_backend_imports_cupy():
    importers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if re.search(r"^\s*(import cupy|from cupy)", p.read_text(encoding="utf-8"), re.M)
                 or re.search(r"^\s*(import cupyx|from cupyx)", p.read_text(encoding="utf-8"), re.M)]
    assert set(importers) <= {"backend.py"}, importers
