"""The built-in PAD demo: shipped data, the documented 3-D to 6-D map, an end-to-end run."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest

import viva_glyph as vg
from viva_glyph import cli, demo


def test_shipped_anchors() -> None:
    names, pad, weights = demo.load_anchors()
    assert len(names) == len(set(names)) == 20
    assert {"calm", "angry", "elated", "afraid", "sad", "neutral"} <= set(names)
    assert pad.shape == (20, 3) and np.all(np.abs(pad) <= 1)
    assert np.all(weights > 0)
    # octant signs of a few states (pleasure, arousal, dominance)
    sign = {n: tuple(np.sign(p)) for n, p in zip(names, pad, strict=True)}
    assert sign["elated"] == (1, 1, 1)
    assert sign["angry"] == (-1, 1, 1)
    assert sign["afraid"] == (-1, 1, -1)
    assert sign["calm"][:2] == (1, -1)


def test_samples_are_deterministic_and_sized_as_documented() -> None:
    a, labels = demo.pad_samples()
    b, _ = demo.pad_samples()
    np.testing.assert_array_equal(a, b)
    _, _, weights = demo.load_anchors()
    expected = int(sum(round(w * demo.POINTS_PER_WEIGHT) for w in weights)) + demo.BACKGROUND
    assert a.shape == (expected, 3) and len(labels) == expected
    assert expected >= vg.default_config().codebook_size
    assert np.all(np.abs(a) <= 1)
    assert not np.array_equal(demo.pad_samples(seed=1)[0], a)


def test_latent_map_by_hand() -> None:
    z = demo.pad_to_latent(np.array([[0.5, -0.25, 2.0]]))
    np.testing.assert_allclose(z, [[0.5, -0.25, 2.0, -0.125, -0.5, 1.0]])
    assert z.dtype == np.float32
    np.testing.assert_array_equal(demo.latent_to_pad(z), z[:, :3])


def test_demo_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("viva_glyph.train")
    pytest.importorskip("matplotlib")
    lines: list[str] = []
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.png").write_text("an old report")
    result = demo.run(out, write=lines.append, force=True)  # a folder in use: force
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "report.png",
        "pad_latent.npy",
        "pad_states.csv",
        "notes.txt",
    }
    assert (out / "notes.txt").read_text() == "mine"  # force replaces the demo's files only
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    enc = vg.load(out / "model.safetensors")
    assert enc.config == vg.default_config() and enc == result.encoder
    latent = np.load(out / "pad_latent.npy")
    pad, _ = demo.pad_samples()
    np.testing.assert_array_equal(latent, demo.pad_to_latent(pad))
    with open(out / "pad_states.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["state", "pleasure", "arousal", "dominance"] and len(rows) == len(pad) + 1
    # a fitted model reconstructs its training data far better than the untrained one
    rel = [r.relative_error for r in result.report.rows]
    assert rel == sorted(rel, reverse=True)
    x = latent.astype(np.float64)
    untrained = vg.new(vg.default_config())
    base = ((x - untrained.decode(untrained.encode(latent))) ** 2).sum() / (x**2).sum()
    assert rel[-1] < base / 10
    text = "\n".join(lines)
    names, anchors, _ = demo.load_anchors()
    for state in demo.SHOWN:
        line = next(ln for ln in lines if ln.startswith(state + " "))
        codes = enc.encode(demo.pad_to_latent(anchors[names.index(state)]))[0]
        gid = sum(int(c) * 256 ** (3 - i) for i, c in enumerate(codes))  # stage 1 most significant
        assert f" {gid} " in line and "[" + " ".join(f"{int(c):>3}" for c in codes) + "]" in line
    assert "rel. error" in text and "distinct glyphs" in text
    assert result.seconds < 60


def test_demo_command_writes_under_the_system_temp_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out: a new folder under the temp directory, printed; the current one untouched."""
    pytest.importorskip("viva_glyph.train")
    system_tmp, cwd = tmp_path / "system-tmp", tmp_path / "checkout"
    system_tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.chdir(cwd)
    code = cli.main(["demo", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert list(cwd.iterdir()) == []
    (folder,) = system_tmp.iterdir()
    assert folder.name.startswith("viva-glyph-demo-") and (folder / "report.png").exists()
    assert out.splitlines()[0] == f"writing to {folder}"
    assert "elated" in out and f"viva-glyph info {folder}/model.safetensors" in out
    assert f"-o {folder}/codes.npy" in out  # the suggested commands write there too


def demo_refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(["demo", "--quiet", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, (out, err)
    return err


def test_demo_out_must_be_new_or_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "model.safetensors").write_bytes(b"precious")
    err = demo_refused(capsys, "--out", str(busy))
    assert f"{busy} is not empty" in err and "--force" in err
    assert [p.name for p in busy.iterdir()] == ["model.safetensors"]
    assert (busy / "model.safetensors").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    err = demo_refused(capsys, "--out", str(tmp_path / "file"), "--force")
    assert "is a file, not a folder" in err
    with pytest.raises(ValueError, match="not empty"):
        demo.run(busy)
