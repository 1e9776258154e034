"""The .pyi stubs describe the built module: mypy's stubtest compares every name,
signature and class in python/vlm/_vlm.pyi with vlm._vlm at run time; mypy --strict
then checks that typical code type-checks and that wrong options are caught."""

import subprocess
import sys
from pathlib import Path

import pytest
import vlm

pytest.importorskip("mypy")


def test_stubtest(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "vlm"],
        cwd=tmp_path,  # mypy's cache lands there, not in the source tree
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_ships_stubs_and_py_typed():
    package = Path(vlm.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_vlm.pyi").is_file()


def test_all_matches_the_stubs():
    stub = (Path(vlm.__file__).parent / "_vlm.pyi").read_text()
    for name in vlm.__all__:
        if name != "__version__":
            assert f"def {name}(" in stub or f"class {name}" in stub, name


GOOD_USAGE = """
from pathlib import Path
import vlm

model: vlm.Model = vlm.load(Path("m"), device="cpu", dtype="f32")
params: int = model.info["parameters"]
text: str = model.describe("a.jpg", language="zh", max_new_tokens=12, stop=["."])
answer: str = model.ask(b"...", "What?", temperature=0.7, top_p=0.9, top_k=20, seed=3)
story: str = model.relate(["a.jpg", Path("b.jpg")], "Tell the story.", greedy=True)
out: vlm.Generation = model.generate(None, [{"role": "user", "content": "hi"}], return_logits=True)
ids: list[int] = out.token_ids
seconds: float = out.timings.time_to_first_token
pieces: list[str] = list(model.stream("a.jpg", question="What?"))
captions: list[str] = model.describe_batch(Path(".").glob("*.jpg"), batch_size=4, progress=True)
results: dict[str, object] = vlm.compare(["m1", Path("m2")], "photos", price_per_hour=5.8, cascade=("m1", "m2"), threshold=-1.0)
try:
    pass
except vlm.ModelFileNotFoundError as e:
    name = e.filename
"""

BAD_USAGE = """
import vlm

model = vlm.load("m")
model.describe("a.jpg", max_tokens=12)
model.ask("a.jpg", "What?", greedy="yes")
n: int = model.describe("a.jpg")
"""


def _mypy(tmp_path, code):
    path = tmp_path / "usage.py"
    path.write_text(code)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        cwd=tmp_path,  # mypy's cache lands there, not in the source tree
        check=False,
        capture_output=True,
        text=True,
    )


def test_stubs_type_check_typical_use(tmp_path):
    out = _mypy(tmp_path, GOOD_USAGE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stubs_reject_wrong_generation_options(tmp_path):
    out = _mypy(tmp_path, BAD_USAGE)
    assert out.returncode == 1
    # One error per bad line: the unknown option, the wrong type, the wrong result type.
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, out.stdout
    assert "usage.py:5:" in errors[0] and "max_tokens" in errors[0] and "[call-arg]" in errors[0]
    assert "usage.py:6:" in errors[1] and "greedy" in errors[1] and "[arg-type]" in errors[1]
    assert "usage.py:7:" in errors[2] and "[assignment]" in errors[2]
