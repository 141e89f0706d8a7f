"""Optional packages: every use of a missing one is an ImportError naming the extra that
installs it, and the command line checks what a command needs before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Code run first in the child process: the packages named are "not installed".
BLOCK = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n"


def run_without(
    names: list[str], code: str, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    script = BLOCK.format(names=names) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
        check=False,
    )


SETUP = """
import numpy as np
import viva_glyph as vg
X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
enc = vg.from_codebooks(np.random.default_rng(1).normal(size=(2, 8, 4)))
"""

CASES = {
    "fit with a bar": (["tqdm"], "vg.fit(X, codebook_size=8, progress=True)", "tqdm", "cli"),
    "plot a report": (
        ["matplotlib"],
        "from viva_glyph import metrics\nmetrics.evaluate(enc, X).plot('r.png')",
        "matplotlib",
        "cli",
    ),
    "torch layer": (["torch"], "import viva_glyph.torch", "torch", "torch"),
    "dask": (["dask"], "import viva_glyph.dask", "dask", "dask"),
    "semantic plot": (
        ["matplotlib"],
        "from viva_glyph import semantic\n"
        "ids = semantic.fit(X, levels=1, codebook_size=4, suffix_size=300)\n"
        "semantic.evaluate(X, ids.unique(X), ids).plot('p.png')",
        "matplotlib",
        "cli",
    ),
    "sharded search": (
        ["dask"],
        "from viva_glyph.index import RvqIndex, search_shards\n"
        "index = RvqIndex(enc)\nindex.add(X)\nindex.save('a.vgindex')\n"
        "search_shards(['a.vgindex'], X[:2], 3)",
        "dask",
        "dask",
    ),
    "parquet data": (
        ["pyarrow"],
        "open('x.parquet', 'wb').write(b'PAR1')\n"
        "from viva_glyph.files import open_vectors\nopen_vectors('x.parquet')",
        "pyarrow",
        "parquet",
    ),
    "zarr codes": (
        ["zarr"],
        "from viva_glyph.files import open_writer\n"
        "with open_writer('c.zarr', (3, 2), np.uint8) as w:\n    pass",
        "zarr",
        "dask",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_missing_optional_package_names_its_extra(tmp_path, case) -> None:
    # The Python API raised a bare ModuleNotFoundError: "No module named 'safetensors'".
    blocked, call, package, extra = CASES[case]
    code = (
        SETUP
        + f"""
try:
{textwrap.indent(call, "    ")}
except ImportError as exc:
    print(type(exc).__name__, "|", exc)
else:
    print("no error")
"""
    )
    res = run_without(blocked, code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"needs {package}: pip install 'viva-glyph[{extra}]'" in res.stdout, res.stdout


CLI = """
import sys
from viva_glyph.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_demo_checks_what_it_needs_before_any_work(tmp_path) -> None:
    # In a core-only install `viva-glyph demo` ran the whole fit, then failed for a
    # missing package and left a half-written folder.
    for blocked in (["matplotlib"],):
        res = run_without(blocked, CLI, tmp_path, "demo", "--out", "d")
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert f"needs {blocked[0]}: pip install 'viva-glyph[cli]'" in res.stderr
        assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("blocked", "argv", "package"),
    [
        (["zarr"], ["encode", "m.safetensors", "x.npy", "-o", "c.zarr"], "zarr"),
        (["pyarrow"], ["encode", "m.safetensors", "x.npy", "-o", "c.parquet"], "pyarrow"),
        (["matplotlib"], ["eval", "m.safetensors", "x.npy", "--plot", "r.png"], "matplotlib"),
    ],
)
def test_commands_check_their_outputs_packages_first(tmp_path, blocked, argv, package) -> None:
    import numpy as np

    import viva_glyph as vg

    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    vg.from_codebooks(np.random.default_rng(1).normal(size=(2, 8, 4))).save(
        tmp_path / "m.safetensors"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_without(blocked, CLI, tmp_path, *argv)
    assert res.returncode == 2 and f"needs {package}: pip install" in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
