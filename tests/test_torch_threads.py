"""fusedrnn.torch and torch's thread count (issue 13 item 2): the modules run on
``torch.get_num_threads()`` threads until ``fusedrnn.set_num_threads`` is called; DataLoader
workers (torch sets their count to 1) run them on one thread."""

import pytest

torch = pytest.importorskip("torch")

import fusedrnn  # noqa: E402
import fusedrnn.torch as ft  # noqa: E402


@pytest.fixture
def following(monkeypatch):
    """A process state where fusedrnn.set_num_threads was never called; torch's and fusedrnn's
    counts restored after."""
    monkeypatch.setattr(fusedrnn, "_threads_set_explicitly", False)
    old_torch, old_ours = torch.get_num_threads(), fusedrnn._C.get_num_threads()
    yield
    torch.set_num_threads(old_torch)
    fusedrnn._C.set_num_threads(old_ours)


def test_modules_follow_torch_set_num_threads(following):
    m = ft.GRU(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    for n in (1, 2, 1):
        torch.set_num_threads(n)
        y, _ = m(x)
        assert fusedrnn.get_num_threads() == n
        fusedrnn._C.set_num_threads(3 if n == 1 else 1)  # someone else moved it: backward
        y.sum().backward()                                # takes torch's count again
        assert fusedrnn.get_num_threads() == n


def test_explicit_fusedrnn_count_wins(following):
    fusedrnn.set_num_threads(1)
    torch.set_num_threads(2)
    ft.LSTM(3, 4)(torch.randn(5, 2, 3))
    assert fusedrnn.get_num_threads() == 1


class _Threads(torch.utils.data.Dataset):
    def __init__(self):
        self.m = ft.LSTM(3, 4)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        with torch.no_grad():
            self.m(torch.randn(5, 2, 3))
        return torch.tensor([fusedrnn.get_num_threads(), torch.get_num_threads()])


def test_dataloader_workers_run_on_one_thread(following):
    torch.set_num_threads(2)
    _Threads()[0]  # the parent runs the model first (the case that once hung)
    loader = torch.utils.data.DataLoader(_Threads(), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    counts = torch.cat(list(loader))
    assert (counts[:, 1] == 1).all(), "torch sets a worker's count to 1"
    assert (counts[:, 0] == 1).all(), counts
