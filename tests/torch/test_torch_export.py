"""The inference path of viva_glyph.torch.ResidualVQ compiled and exported, against eager."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from viva_glyph.torch import ResidualVQ  # noqa: E402

D, M, K = 6, 3, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained() -> ResidualVQ:
    g = torch.Generator().manual_seed(0)
    vq = ResidualVQ(D, M, K, seed=0, dead_after=2)
    for _ in range(3):
        vq(torch.randn(256, D, generator=g) * 2.0)
    return vq.eval()


def inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2.0


def assert_same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        a = torch.as_tensor(a)
        assert a.shape == b.shape and a.dtype == b.dtype
        if b.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_matches_eager(trained: ResidualVQ) -> None:
    compiled = torch.compile(trained, fullgraph=True)
    x = inputs(40, 1)
    with torch.no_grad():
        assert_same(compiled(x), trained(x))
        assert_same(compiled(x, num_stages=2), trained(x, num_stages=2))


def test_torch_export_matches_eager(trained: ResidualVQ) -> None:
    n = torch.export.Dim("n")
    ep = torch.export.export(trained, (inputs(32, 2),), dynamic_shapes={"x": {0: n}})
    # no collective, no random draw, no state update in the exported graph
    ops = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
    assert not [op for op in ops if "c10d" in op or "rand" in op or "copy_" in op]
    for rows in (32, 50):
        x = inputs(rows, rows)
        assert_same(tuple(ep.module()(x)), tuple(trained(x)))


def test_onnx_export_matches_eager(trained: ResidualVQ) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    n = torch.export.Dim("n")
    prog = torch.onnx.export(
        trained, (inputs(32, 3),), dynamo=True, dynamic_shapes={"x": {0: n}}, verbose=False
    )
    sess = ort.InferenceSession(prog.model_proto.SerializeToString())
    for rows in (32, 70):
        x = inputs(rows, rows + 1)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert_same(tuple(torch.from_numpy(g) for g in got), tuple(trained(x)))
