"""fusedrnn.torch's custom operators on CUDA tensors (issue 13 on a GPU): second-order
gradients (the recomputation runs torch's native RNN ops, cuDNN's backward not being
differentiable), torch.compile(fullgraph=True) and torch.export."""

import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402

from _cuda_support import LIBS  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_with_cuda():
    if "torch" not in LIBS:
        pytest.skip("this torch has no CUDA")


def test_gradgradcheck_on_cuda():
    torch.manual_seed(0)
    m = ft.LSTM(2, 3, num_layers=2, bidirectional=True).double().cuda()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, *p):
        return torch.func.functional_call(m, dict(zip(names, p)), (x,))[0]
    # functional_call is a torch.func transform only with grad/vmap; here it is autograd, so
    # the kernels run forward and the recomputation runs under create_graph
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_compile_and_export_on_cuda():
    torch.manual_seed(0)
    m = ft.GRU(8, 16, num_layers=2).cuda()
    x = torch.randn(7, 3, 8, device="cuda")
    compiled = torch.compile(m, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0])
    T = torch.export.Dim("T", min=2)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: T},))
    assert "fusedrnn.stack_forward" in str(ep.graph)
    other = torch.randn(5, 3, 8, device="cuda")
    torch.testing.assert_close(ep.module()(other)[0], m(other)[0])
