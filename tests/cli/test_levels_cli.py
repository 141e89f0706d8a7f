"""Per-level codebook sizes through the CLI: fit, info, encode, decode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import viva_glyph as vg
from viva_glyph import cli


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_encode_decode_with_mixed_sizes(tmp_path: Path, capsys: Any) -> None:
    x = np.random.default_rng(0).standard_normal((1500, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model, codes, back = (str(tmp_path / n) for n in ("m.safetensors", "c.npy", "y.npy"))
    code, out, err = run(capsys, "fit", str(tmp_path / "x.npy"), "-o", model,
                         "--codebook-size", "4, 32,16", "--seed", "3")  # fmt: skip
    assert (code, err) == (0, "") and "3 stages x 4,32,16 codes" in out
    enc = vg.load(model)
    assert enc.config.stage_sizes == (4, 32, 16)
    assert enc == vg.fit(x, codebook_size=[4, 32, 16], seed=3)  # the CLI fits at the defaults
    code, out, err = run(capsys, "encode", model, str(tmp_path / "x.npy"), "-o", codes,
                         "--beam", "3", "--block-rows", "100")  # fmt: skip
    assert (code, err) == (0, "")
    np.testing.assert_array_equal(np.load(codes), enc.encode(x, beam_size=3))
    code, out, err = run(capsys, "decode", model, codes, "-o", back)
    assert (code, err) == (0, "")
    np.testing.assert_array_equal(np.load(back), enc.decode(np.load(codes)))
    code, out, err = run(capsys, "info", model, "--json")
    info = json.loads(out)
    assert info["codebook_size"] == [4, 32, 16] and info["vocabulary"] == 4 * 32 * 16
    assert info["bits_per_vector"] == pytest.approx(2 + 5 + 4)
    # a code beyond its own stage's size is refused with one line naming the row
    bad = np.load(codes).astype(np.int64)
    bad[5, 0] = 4
    np.save(tmp_path / "bad.npy", bad)
    code, out, err = run(capsys, "decode", model, str(tmp_path / "bad.npy"), "-o", back)
    assert code == 2 and "[0, 4) at stage 0" in err and "row 5" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codebook-size", "4,x"], "comma-separated list"),
        (["--codebook-size", "4,0"], "comma-separated list"),
        (["--codebook-size", "4,8", "--stages", "3"], "num_stages=3 contradicts the 2 sizes"),
        (["--codebook-size", "4,900"], "needs at least --codebook-size (900, the largest size)"),
    ],
)
def test_fit_size_errors_exit_2_with_one_line(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((600, 3)))
    proc = subprocess.run(
        [sys.executable, "-m", "viva_glyph", "fit", str(tmp_path / "x.npy"),
         "-o", str(tmp_path / "m.safetensors"), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "m.safetensors").exists()
