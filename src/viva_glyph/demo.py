"""The built-in demo: emotional states in PAD space, fitted with the default config.

Data
----
``demo_data/pad_anchors.csv`` (shipped in the package) names 20 emotional
states with a position in PAD space (pleasure, arousal, dominance, each in
[-1, 1]) and a sampling weight. The positions are illustrative values chosen
by the viva-glyph authors (public domain, CC0): they follow the sign pattern
of Mehrabian's PAD octants (e.g. elated +P +A +D, calm +P -A, angry -P +A +D,
afraid -P +A -D) but are *not* measurements from a published study.

:func:`pad_samples` turns them into a data set with a documented, seeded
generator: ``round(weight * 300)`` points per state drawn from a normal
distribution around its anchor (standard deviation 0.15 per axis), plus 600
points uniform in the cube, everything clipped to [-1, 1]; numpy PCG64 seeded
with 1977. That gives 5,940 vectors, enough for 256 codes per stage.

The 3-D to 6-D map
------------------
:func:`pad_to_latent` maps (P, A, D) to the 6-D latent of
:func:`viva_glyph.default_config` as ``(P, A, D, P*A, A*D, D*P)``: the three
values plus their pairwise products (the interactions, e.g. "unpleasant and
aroused"). It is fixed and needs no fitting; the PAD values of a decoded latent
are its first three coordinates (:func:`latent_to_pad`).
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.config import default_config
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.glyph import codes_to_glyph_ids

__all__ = [
    "SEED",
    "DemoResult",
    "latent_to_pad",
    "load_anchors",
    "pad_samples",
    "pad_to_latent",
    "run",
]

SEED = 1977
SPREAD = 0.15
POINTS_PER_WEIGHT = 300
BACKGROUND = 600
SHOWN = ("calm", "relaxed", "elated", "angry", "afraid", "sad", "bored", "neutral")


def load_anchors() -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """Names, PAD anchors (S, 3) and weights (S,) of the shipped states."""
    text = resources.files("viva_glyph").joinpath("demo_data/pad_anchors.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    names = [r["state"] for r in rows]
    pad = np.array([[float(r[k]) for k in ("pleasure", "arousal", "dominance")] for r in rows])
    weights = np.array([float(r["weight"]) for r in rows])
    return names, pad, weights


def pad_samples(seed: int = SEED) -> tuple[NDArray[np.float64], list[str]]:
    """The demo data set: PAD points (N, 3) float64 and the state each came from.

    Points of the uniform background are labelled ``"background"``.
    """
    names, anchors, weights = load_anchors()
    rng = np.random.Generator(np.random.PCG64(seed))
    parts, labels = [], []
    for name, anchor, w in zip(names, anchors, weights, strict=True):
        count = round(w * POINTS_PER_WEIGHT)
        parts.append(anchor + rng.normal(0.0, SPREAD, size=(count, 3)))
        labels += [name] * count
    parts.append(rng.uniform(-1.0, 1.0, size=(BACKGROUND, 3)))
    labels += ["background"] * BACKGROUND
    return np.clip(np.concatenate(parts), -1.0, 1.0), labels


def pad_to_latent(pad: NDArray[Any]) -> NDArray[np.float32]:
    """Map PAD points (N, 3) to the 6-D latent ``(P, A, D, P*A, A*D, D*P)``, float32."""
    p = np.asarray(pad, dtype=np.float64).reshape(-1, 3)
    products = p * np.roll(p, -1, axis=1)  # (P*A, A*D, D*P)
    return np.concatenate([p, products], axis=1).astype(np.float32)


def latent_to_pad(latent: NDArray[Any]) -> NDArray[Any]:
    """PAD values of latent vectors (..., 6): their first three coordinates."""
    return np.asarray(latent)[..., :3]


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run` produced: the folder, the fitted encoder and the report."""

    out: Path
    encoder: RvqEncoder
    report: Any
    seconds: float


def run(
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    write: Callable[[str], None] = print,
) -> DemoResult:
    """Fit the default config on the PAD demo data and report on it.

    Writes ``model.safetensors``, ``report.png``, ``pad_latent.npy`` (the 6-D
    training vectors) and ``pad_states.csv`` (the PAD points and their state)
    into a new folder ``viva-glyph-demo-*`` under the system's temp directory
    (:func:`tempfile.gettempdir`), or into ``out``.

    Parameters
    ----------
    out : path, optional
        A new or empty folder (created if missing).
    force : bool
        Write into ``out`` even when it holds files: the four demo files are
        replaced, nothing else is touched.
    progress : bool
        tqdm progress bars on stderr.
    write : callable
        Receives the text to show, line by line (``print`` by default).
    """
    from viva_glyph.checks import require_package
    from viva_glyph.files import save_array
    from viva_glyph.metrics import evaluate
    from viva_glyph.train import fit

    # what the end of the run needs, checked before a folder is made or anything fitted
    require_package("matplotlib", "the demo (it writes report.png)")
    if progress:
        require_package("tqdm", "the demo's progress bars")
    t0 = time.perf_counter()
    folder = _folder(out, force)
    write(f"writing to {folder}")
    pad, labels = pad_samples()
    latent = pad_to_latent(pad)
    save_array(folder / "pad_latent.npy", latent)
    _write_states(folder / "pad_states.csv", pad, labels)
    write(
        f"PAD demo: {len(latent)} emotional states (pleasure, arousal, dominance) mapped to "
        "the 6-D latent (P, A, D, P*A, A*D, D*P)"
    )
    config = default_config()
    write(
        f"fitting {config.num_stages} stages x {config.codebook_size} codes on "
        f"dimension {config.dimension} ..."
    )
    encoder = fit(latent, config, seed=0, progress=progress)
    encoder.save(folder / "model.safetensors")
    report = evaluate(encoder, latent, progress=progress)
    report.plot(folder / "report.png")
    write("")
    write(report.table())
    write("")
    for line in _glyph_lines(encoder):
        write(line)
    seconds = time.perf_counter() - t0
    write("")
    write(f"wrote {folder}/model.safetensors, report.png, pad_latent.npy ({seconds:.1f} s)")
    write("next, try:")
    write(f"  viva-glyph info {folder}/model.safetensors")
    write(
        f"  viva-glyph encode {folder}/model.safetensors {folder}/pad_latent.npy "
        f"-o {folder}/codes.npy"
    )
    write(
        f"  viva-glyph decode {folder}/model.safetensors {folder}/codes.npy -o {folder}/decoded.npy"
    )
    return DemoResult(folder, encoder, report, seconds)


def _folder(out: str | os.PathLike[str] | None, force: bool) -> Path:
    """The output folder: a new one under the temp directory, or ``out`` if new or empty."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="viva-glyph-demo-"))
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    if not force and folder.is_dir() and any(folder.iterdir()):
        raise ValueError(
            f"{folder} is not empty: give a new or empty folder, or --force (force=True) "
            "to replace the demo's files in it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_states(path: Path, pad: NDArray[np.float64], labels: list[str]) -> None:
    from viva_glyph.files import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["state", "pleasure", "arousal", "dominance"])
        for label, row in zip(labels, pad, strict=True):
            w.writerow([label, *(f"{v:.4f}" for v in row)])


def _glyph_lines(encoder: RvqEncoder) -> list[str]:
    names, anchors, _ = load_anchors()
    chosen = [names.index(n) for n in SHOWN]
    x = pad_to_latent(anchors[chosen])
    codes, errors = encoder.encode_with_errors(x)
    ids = codes_to_glyph_ids(codes, encoder.config.codebook_size)
    coarse = latent_to_pad(encoder.decode(codes[:, :1]))
    full = latent_to_pad(encoder.decode(codes))
    lines = [
        f"{'state':<9} {'PAD in':<20} {'glyph id':>10}  {'tokens':<17} "
        f"{'PAD after stage 1':<20} {'PAD decoded':<20} {'error':>6}"
    ]
    for i, n in enumerate(SHOWN):
        tokens = "[" + " ".join(f"{int(t):>3}" for t in codes[i]) + "]"
        lines.append(
            f"{n:<9} {_pad(anchors[chosen[i]]):<20} {int(ids[i]):>10}  {tokens:<17} "
            f"{_pad(coarse[i]):<20} {_pad(full[i]):<20} {errors[i]:>6.3f}"
        )
    return lines


def _pad(v: NDArray[Any]) -> str:
    return "(" + ",".join(f"{float(c):+.2f}" for c in v) + ")"
