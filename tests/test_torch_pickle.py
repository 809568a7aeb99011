"""The torch-free .pt reader: torch.save files read exactly; malicious pickles refused, unrun."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from jsae.converters.torch_pickle import TensorInfo, describe_pt, load_pt
from reference import converter_layouts as L

import jsae


@pytest.fixture(scope="session")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return L.reference_fixtures(tmp_path_factory)


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt"])
def test_real_torch_files_round_trip_exactly(ref: Path, name: str) -> None:
    obj = load_pt(ref / "torch" / name)
    expected = np.load(ref / "torch" / "expected.npz")
    state = obj["state"]
    keys = [k for k in expected.files if not k.endswith(".dtype") and k != "nested"]
    assert sorted(state) == sorted(keys)
    numpy_names = {"bfloat16": "bfloat16", "bool": "bool"}
    for key in keys:
        value = state[key]
        torch_dtype = str(expected[key + ".dtype"])
        assert value.dtype.name == numpy_names.get(torch_dtype, torch_dtype), key
        assert value.shape == expected[key].shape, key
        assert np.array_equal(value.astype(expected[key].dtype), expected[key]), key
    assert state["bf16"].dtype == ml_dtypes.bfloat16
    # views of one storage keep their own values (transpose, offset slices, steps)
    assert np.array_equal(state["transposed"], state["f32"].T)
    assert np.array_equal(state["block"], state["f32"][1:4, 2:7])
    # non-tensor entries come back as plain Python data
    assert obj["activation"] == "TopK"
    assert obj["activation_state_dict"] == {"k": 32, "postact_fn": "ReLU"}
    assert obj["misc"][:4] == [1, 2.5, None, (3, "x")]
    assert np.array_equal(obj["misc"][4]["nested"], expected["nested"])
    assert obj["blob"] == b"\x00\x01bytes"
    assert obj["flags"] == {True, False}


def test_describe_reads_shapes_without_data(ref: Path) -> None:
    info = describe_pt(ref / "torch" / "zip.pt")["state"]
    assert isinstance(info["bf16_t"], TensorInfo)
    assert info["bf16_t"].shape == (4, 3) and info["bf16_t"].dtype == ml_dtypes.bfloat16


# ------------------------------------------------------------------------ malicious files


class _RunsCommand:
    """Unpickling this (with plain pickle) would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _as_torch_zip(path: Path, payload: bytes) -> Path:
    """Wrap a pickle in torch's zip layout (archive/data.pkl), as torch.save writes it."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


def _payloads(marker: Path) -> dict[str, bytes]:
    shell = f"touch {marker}".encode()
    return {
        "os.system via __reduce__": pickle.dumps(_RunsCommand(marker), protocol=2),
        "os.system inside a state dict": pickle.dumps(
            {"w": 1.0, "evil": _RunsCommand(marker)}, protocol=4
        ),
        "builtins.eval (GLOBAL)": b"cbuiltins\neval\n(V__import__('os').system('"
        + shell
        + b"')\ntR.",
        "builtins.exec (STACK_GLOBAL)": b"\x80\x04\x95"
        + bytes(8)  # frame length (ignored)
        + b"\x8c\x08builtins\x8c\x04exec\x93V__import__('os').system('"
        + shell
        + b"')\n\x85R.",
        "posix.system (INST)": b"(V" + shell + b"\nios\nsystem\n.",
        "subprocess.Popen": b"csubprocess\nPopen\n((V/bin/sh\nV-c\nV" + shell + b"\nltR.",
        "copyreg._reconstructor": (
            b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\ncbuiltins\nobject\nNtR."
        ),
        "getattr chain": b"cbuiltins\ngetattr\n(cbuiltins\nlist\nVappend\ntR.",
    }


@pytest.mark.parametrize("kind", list(_payloads(Path("/x"))))
@pytest.mark.parametrize("container", ["zip", "raw"])
def test_malicious_pickles_are_refused_without_running(
    tmp_path: Path, kind: str, container: str
) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    path = tmp_path / "evil.pt"
    if container == "zip":
        _as_torch_zip(path, payload)
    else:
        path.write_bytes(payload if payload[:1] == b"\x80" else b"\x80\x02" + payload)
    with pytest.raises((jsae.UnsafePickleError, jsae.FormatError)) as err:
        load_pt(path)
    assert not marker.exists(), "the payload ran"
    if container == "zip" or payload[:1] != b"\x80":
        # zip: the payload is the main pickle; its first global is refused by name
        assert isinstance(err.value, jsae.UnsafePickleError) or "magic" in str(err.value)
    assert (
        "code" in str(err.value)
        or "torch checkpoint" in str(err.value)
        or "magic" in str(err.value)
    )


def test_refusal_names_the_global(tmp_path: Path) -> None:
    path = _as_torch_zip(tmp_path / "a.pt", pickle.dumps(_RunsCommand(tmp_path / "m"), protocol=2))
    with pytest.raises(jsae.UnsafePickleError, match=r"posix\.system|os\.system|nt\.system"):
        load_pt(path)
    with pytest.raises(jsae.UnsafePickleError, match="state_dict"):
        load_pt(path)


def test_real_pickled_module_is_refused(ref: Path) -> None:
    with pytest.raises(jsae.UnsafePickleError, match=r"torch\.nn"):
        load_pt(ref / "torch" / "module.pt")


def test_out_of_bounds_tensor_record_is_refused(tmp_path: Path) -> None:
    """A tensor whose strides reach past its storage must not read foreign memory."""
    from jsae.converters import torch_pickle as tp

    class Global:
        """Pickled as GLOBAL `module name` without importing it (torch is not installed)."""

        def __init__(self, module: str, name: str):
            self.spec = f"{module}\n{name}\n".encode()

        def __call__(self):  # pickle insists reduce functions be callable
            raise AssertionError("never called")

    storage_type = Global("torch", "FloatStorage")
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")

    class Tensor:
        def __reduce__(self):
            return (rebuild, ("STORAGE", 0, (4, 4), (100, 1), False, {}))

    class P(pickle._Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_type, "0", "cpu", 16) if obj == "STORAGE" else None

        def save(self, obj, save_persistent_id=True):
            if isinstance(obj, Global):
                return self.write(pickle.GLOBAL + obj.spec)
            return super().save(obj, save_persistent_id)

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": Tensor()})
    path = tmp_path / "bad.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", np.arange(16, dtype=np.float32).tobytes())
    with pytest.raises(jsae.FormatError, match="past the end of its storage"):
        tp.load_pt(path)


def test_corrupt_and_foreign_files_fail_clearly(tmp_path: Path, ref: Path) -> None:
    data = (ref / "torch" / "zip.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(jsae.FormatError):
        load_pt(tmp_path / "trunc.pt")
    legacy = (ref / "torch" / "legacy.pt").read_bytes()
    (tmp_path / "trunc_legacy.pt").write_bytes(legacy[: len(legacy) - 40])
    with pytest.raises(jsae.FormatError, match="truncated"):
        load_pt(tmp_path / "trunc_legacy.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(300))
    with pytest.raises(jsae.FormatError, match="not a torch checkpoint"):
        load_pt(tmp_path / "noise.pt")
    with tarfile.open(tmp_path / "old.pt", "w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(jsae.FormatError, match="tar format"):
        load_pt(tmp_path / "old.pt")
    with pytest.raises(jsae.FormatError, match="missing"):
        load_pt(tmp_path / "absent.pt")


def _damaged(data: bytes, offsets: list[int], mode: str) -> dict[int, bytes]:
    """Copies of `data` with one byte flipped, or cut off, at each offset."""
    out = {}
    for at in offsets:
        if 0 < at < len(data):
            if mode == "flip":
                blob = bytearray(data)
                blob[at] ^= 0xFF
                out[at] = bytes(blob)
            else:
                out[at] = data[:at]
    return out


@pytest.mark.parametrize("mode", ["flip", "truncate"])
@pytest.mark.parametrize(
    "name", ["pt_layouts/goodfire/Llama-3.1-8B-Instruct-SAE-l19.pth", "torch/zip.pt"]
)
def test_damaged_zip_checkpoints_raise_format_errors(
    tmp_path: Path, ref: Path, name: str, mode: str
) -> None:
    """A flipped byte anywhere in a torch zip (local headers, member names, data, central
    directory) or a cut at any point either still reads or raises a FormatError naming the
    file; never a raw zipfile/codec exception (member names are decoded as UTF-8, so a flip
    inside one used to escape as UnicodeDecodeError)."""
    data = (ref / name).read_bytes()
    end = len(data)
    # every byte of the first local header and of the central directory, a sample in between
    offsets = sorted({*range(0, 160), *range(end - 700, end), *range(160, end - 700, 53)})
    file = tmp_path / Path(name).name
    failures = 0
    for at, blob in _damaged(data, offsets, mode).items():
        file.write_bytes(blob)
        for read in (describe_pt, load_pt):
            try:
                read(file)
            except jsae.FormatError as exc:
                assert str(file) in str(exc), (at, exc)
                failures += 1
            except Exception as exc:  # any other type is the bug
                pytest.fail(f"{mode} at byte {at}: {read.__name__} raised {exc!r}")
    assert failures > 0
    # the layouts' own loader (format detection included) reports it the same way
    file.write_bytes(_damaged(data, [64], "flip")[64])
    with pytest.raises(jsae.FormatError, match="corrupt or truncated"):
        jsae.load(file)
