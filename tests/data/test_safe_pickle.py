"""Restricted unpickling: numpy data loads, anything that could run code is refused unrun."""

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.data.safe_pickle import (
    ALLOWED_GLOBALS,
    UnsafePickleError,
    convert_pickle,
    safe_load,
    safe_loads,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "interfuse"


class RunsCommand:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def sample_data():
    rng = np.random.default_rng(0)
    return {
        "train": {
            "vision": rng.normal(size=(3, 4, 2)).astype(np.float32),
            "labels": np.array([[1.5], [-2.0], [0.0]]),
            "id": np.array(["a", "b", b"c"], dtype=object),
        },
        "meta": [1, 2.5, "text", (True, None), {3, 4}, frozenset({5}), 1 + 2j, b"\x00\xff"],
        "scalar": np.float64(3.25),
        "ordered": OrderedDict(a=np.arange(3)),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "record": np.zeros(2, dtype=[("x", "f4"), ("y", "i8")]),
    }


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_data_round_trips(protocol):
    data = sample_data()
    loaded = safe_loads(pickle.dumps(data, protocol=protocol))
    np.testing.assert_array_equal(loaded["train"]["vision"], data["train"]["vision"])
    assert loaded["train"]["vision"].dtype == np.float32
    assert list(loaded["train"]["id"]) == ["a", "b", b"c"]
    assert loaded["meta"] == data["meta"]
    assert loaded["scalar"] == 3.25 and isinstance(loaded["scalar"], np.float64)
    np.testing.assert_array_equal(loaded["ordered"]["a"], np.arange(3))
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["record"].dtype == data["record"].dtype


def test_numpy_1_module_names_are_accepted():
    """numpy 1.x pickles name numpy.core.*; numpy 2 moved it to numpy._core."""
    data = pickle.dumps({"x": np.arange(4.0)}, protocol=2)
    old = data.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old
    np.testing.assert_array_equal(safe_loads(old)["x"], np.arange(4.0))


def test_malicious_pickle_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"train": {"vision": np.zeros(3), "x": [RunsCommand(marker)]}}
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global '\w+\.system'") as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "offender"),
    [
        (b"cbuiltins\neval\n(V1+1\ntR.", "builtins.eval"),
        (b"c__builtin__\ngetattr\n(V\nVjoin\ntR.", "builtins.getattr"),
        (b"cnumpy\nload\n(Vx\ntR.", "numpy.load"),
        (b"cnumpy.core.multiarray\n_reconstruct_evil\n(tR.", "numpy._core.multiarray"),
        (b"csubprocess\nPopen\n(Vls\ntR.", "subprocess.Popen"),
    ],
)
def test_globals_outside_the_allow_list_are_named(payload, offender):
    with pytest.raises(UnsafePickleError, match=re.escape(offender.split(".")[0])):
        safe_loads(payload, source="bad.pkl")


def test_codecs_encode_only_does_latin1():
    assert safe_loads(b"c_codecs\nencode\n(V\xe9\nVlatin1\ntR.") == b"\xe9"
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_loads(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")


def test_allow_list_is_small_and_explicit():
    modules = {module for module, _ in ALLOWED_GLOBALS}
    assert modules <= {
        "numpy",
        "numpy._core.multiarray",
        "numpy._core.numeric",
        "numpy.core.multiarray",
        "numpy.core.numeric",
        "builtins",
        "collections",
        "_codecs",
    }
    forbidden = {"eval", "exec", "getattr", "open", "__import__", "compile", "apply"}
    assert not {name for _, name in ALLOWED_GLOBALS} & forbidden


def test_garbage_gives_a_clear_error(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="junk.pkl: not a readable data pickle"):
        safe_load(path)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        safe_load(tmp_path / "missing.pkl")


def test_convert_writes_a_pickle_free_npz(tmp_path):
    source, target = tmp_path / "data.pkl", tmp_path / "data.npz"
    data = sample_data()
    source.write_bytes(pickle.dumps(data))
    written, skipped = convert_pickle(source, target)
    assert written["train/vision"] == ((3, 4, 2), "float32")
    assert set(skipped) == {"meta"}  # mixed Python objects cannot be stored without pickle
    with np.load(target, allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["train/vision"], data["train"]["vision"])
        assert list(archive["train/id"]) == ["a", "b", "c"]  # bytes ids decoded
        assert archive["record"].dtype == data["record"].dtype
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "data.pkl"]  # no temp files


def test_convert_command(tmp_path):
    source, target = tmp_path / "data.pkl", tmp_path / "out.npz"
    source.write_bytes(pickle.dumps({"train": {"x": np.ones((2, 3))}}))
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(source), str(target)])
    assert result.exit_code == 0, result.output
    assert "train/x: (2, 3) float64" in result.output and "wrote 1 arrays" in result.output
    result = runner.invoke(main, ["convert", str(source), str(target)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert runner.invoke(main, ["convert", str(source), str(target), "--overwrite"]).exit_code == 0


def test_convert_command_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    source, target = tmp_path / "evil.pkl", tmp_path / "out.npz"
    source.write_bytes(pickle.dumps([RunsCommand(marker)]))
    result = CliRunner().invoke(main, ["convert", str(source), str(target)])
    assert result.exit_code == 1
    assert "refusing to load global" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not target.exists()


def test_no_unsafe_loading_anywhere_in_the_package():
    pattern = re.compile(r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|Unpickler\(")
    offenders = []
    for file in SRC.rglob("*.py"):
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and file.name != "safe_pickle.py":
                offenders.append(f"{file.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders
    text = (SRC / "data" / "safe_pickle.py").read_text(encoding="utf-8")
    assert not re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True", text)
