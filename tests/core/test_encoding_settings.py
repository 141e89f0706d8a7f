"""Encoding settings: a model encodes as it was trained unless a call says otherwise,
and its file keeps them; a file without them is a greedy model."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import brute_force_encode, run_cli

import viva_glyph as vg
from viva_glyph.core import EncodeSettings, ModelFormatError, read_metadata

DATA = Path(__file__).resolve().parents[1] / "data"


def _data(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * 0.8 ** np.arange(d)).astype(np.float32)


@pytest.fixture(scope="module")
def beam_model() -> vg.RvqEncoder:
    return vg.fit(_data(3_000, 8, 0), num_stages=3, codebook_size=16, beam_size=4, seed=1)


def test_fit_records_the_beam_it_trained_for(beam_model: vg.RvqEncoder) -> None:
    x = _data(300, 8, 1)
    assert beam_model.encoding == EncodeSettings(beam_size=4)
    assert "beam_size=4" in repr(beam_model)
    default = beam_model.encode(x)
    np.testing.assert_array_equal(default, beam_model.encode(x, beam_size=4))
    greedy = beam_model.encode(x, beam_size=1)  # the caller overrides the model
    codes, _ = brute_force_encode(beam_model.codebook_array, x[0])  # stage-wise nearest
    np.testing.assert_array_equal(greedy[0], codes)
    assert not np.array_equal(default, greedy)  # the beam finds other codes for some rows
    err_default = np.linalg.norm(x - beam_model.decode(default), axis=1)
    err_greedy = np.linalg.norm(x - beam_model.decode(greedy), axis=1)
    assert err_default.mean() < err_greedy.mean()
    _, errors = beam_model.encode_with_errors(x)  # the same default
    np.testing.assert_allclose(errors, err_default, rtol=1e-5)


def test_a_greedy_fit_and_a_built_encoder_encode_greedily() -> None:
    x = _data(2_000, 6, 2)
    assert vg.fit(x, num_stages=2, codebook_size=16).encoding == EncodeSettings()
    assert vg.new(vg.default_config()).encoding.beam_size == 1
    assert vg.from_codebooks(np.ones((2, 3, 4))).encoding.beam_size == 1


def test_settings_survive_files_and_pickles(beam_model: vg.RvqEncoder, tmp_path: Path) -> None:
    beam_model.save(tmp_path / "m.safetensors")
    back = vg.load(tmp_path / "m.safetensors")
    assert back == beam_model and back.encoding.beam_size == 4
    meta = read_metadata(tmp_path / "m.safetensors")
    assert json.loads(meta["encoding"]) == {"beam_size": 4}
    assert pickle.loads(pickle.dumps(beam_model)).encoding.beam_size == 4
    greedy = vg.new(vg.default_config())
    greedy.save(tmp_path / "g.safetensors")  # greedy models write no setting at all
    assert "encoding" not in read_metadata(tmp_path / "g.safetensors")
    # a model file of version 0.1 (no settings) loads as greedy
    assert vg.load(DATA / "fit_v0_1.safetensors").encoding == EncodeSettings()


def test_equal_codebooks_with_other_settings_are_other_encoders(
    beam_model: vg.RvqEncoder,
) -> None:
    same = vg.RvqEncoder(beam_model.codebooks, encoding=EncodeSettings(4))
    other = vg.RvqEncoder(beam_model.codebooks, encoding=EncodeSettings(2))
    assert same == beam_model and other != beam_model


def _with_encoding(path: Path, value: str) -> Path:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["encoding"] = value
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    out = path.with_name("edited.safetensors")
    out.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    return out


@pytest.mark.parametrize(
    "value",
    [
        '{"beam_size": 0}',
        '{"beam_size": "4"}',
        '{"beam_size": true}',
        '{"beam_size": 1e9}',
        '{"beam_size": 100000000}',
        '{"beams": 4}',
        "[4]",
        "not json",
        '{"beam_size": {"a": 1}}',
    ],
)
def test_hostile_settings_are_refused(tmp_path: Path, value: str) -> None:
    vg.new(vg.default_config()).save(tmp_path / "m.safetensors")
    bad = _with_encoding(tmp_path / "m.safetensors", value)
    with pytest.raises(ModelFormatError, match="encoding settings are not valid"):
        vg.load(bad)
    res = run_cli("info", str(bad))
    assert res.returncode == 2 and "encoding settings" in res.stderr


def test_settings_are_checked() -> None:
    with pytest.raises(TypeError, match="beam_size must be a positive int"):
        EncodeSettings(beam_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beam_size must be a positive int"):
        EncodeSettings(beam_size=0)
    with pytest.raises(TypeError, match="encoding must be EncodeSettings"):
        vg.RvqEncoder(vg.new(vg.default_config()).codebooks, encoding={"beam_size": 2})  # type: ignore[arg-type]


def test_consumers_take_the_model_setting(beam_model: vg.RvqEncoder, tmp_path: Path) -> None:
    from viva_glyph import metrics
    from viva_glyph.index import RvqIndex

    x = _data(500, 8, 3)
    assert RvqIndex(beam_model).beam_size == 4
    assert RvqIndex(beam_model, beam_size=1).beam_size == 1
    assert metrics.evaluate(beam_model, x).beam_size == 4
    beam_model.save(tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", x)
    res = run_cli("encode", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npy"),
                  "-o", str(tmp_path / "c.npy"), "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), beam_model.encode(x))
    info = json.loads(run_cli("info", str(tmp_path / "m.safetensors"), "--json").stdout)
    assert info["encoding"] == {"beam_size": 4}
