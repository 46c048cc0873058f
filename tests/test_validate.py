"""neurosim.validate.finite: one float64 sum decides, an exact count confirms and names the bad values."""
import re

import pytest
import torch

from neurosim import validate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad,count", [([float("nan")], 1), ([float("inf"), float("-inf")], 2), ([], 0)])
def test_finite_counts_nonfinite_values(dtype, bad, count):
    x = torch.linspace(-3, 3, 50, dtype=dtype)
    x[7: 7 + len(bad)] = torch.tensor(bad, dtype=dtype)
    if count:
        with pytest.raises(ValueError, match=rf"^xs contains {count} NaN/inf value\(s\)"):
            validate.finite("xs", x)
    else:
        assert validate.finite("xs", x) is x


def test_finite_values_whose_sum_overflows_pass():
    big = torch.finfo(torch.float64).max
    x = torch.tensor([big, big, 1.0], dtype=torch.float64)  # the float64 sum is inf; every element is finite
    assert validate.finite("x", x) is x
    f32 = torch.full((1000,), torch.finfo(torch.float32).max)  # would overflow a float32 sum
    assert validate.finite("x", f32) is f32


def test_finite_rejects_non_tensors_and_ignores_integer_tensors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        validate.finite("x", [1.0])
    i = torch.arange(5)
    assert validate.finite("x", i) is i


def test_deferred_checks_queue_verdicts_and_raise_once_at_the_end_naming_where():
    where = ["layer 'a'"]
    good = torch.ones(4)
    nan = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"^layer 'b': x contains NaN/inf value\(s\)"):
        with validate.deferred_checks(where=lambda: where[0]) as checks:
            validate.finite("x", good)
            where[0] = "layer 'b'"
            assert validate.finite("x", nan) is nan  # no error yet: the verdict is queued
            validate.finite("x", torch.tensor([float("inf")], dtype=torch.float16))
            assert len(checks) == 3
    assert validate.active_checks() is None
    with pytest.raises(ValueError, match="contains 1 NaN"):  # outside the block: checked at once again
        validate.finite("x", nan)


def test_deferred_checks_float64_overflowing_sums_and_kernel_flags():
    big = torch.finfo(torch.float64).max
    with validate.deferred_checks() as checks:
        validate.finite("x", torch.tensor([big, big], dtype=torch.float64))  # finite values, overflowing sum
        validate.flag("y", torch.zeros(2), torch.zeros(1, dtype=torch.int32))
        assert len(checks) == 2
    with pytest.raises(ValueError, match=r"^y contains NaN/inf"):
        with validate.deferred_checks():
            validate.flag("y", torch.zeros(2), torch.ones(1, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"^y contains 1 NaN/inf"):  # not deferred: confirmed and counted
        validate.flag("y", torch.tensor([0.0, float("nan")]), torch.ones(1, dtype=torch.int32))


def test_deferred_checks_nest_and_are_not_read_when_an_exception_is_pending():
    nan = torch.tensor([float("nan")])
    with pytest.raises(KeyError):
        with validate.deferred_checks():
            validate.finite("x", nan)
            raise KeyError("first error wins")
    with pytest.raises(ValueError, match="^outer: x"):
        with validate.deferred_checks(where=lambda: "outer"):
            with validate.deferred_checks(where=lambda: "inner") as inner:
                validate.finite("z", torch.ones(1))
            assert len(inner) == 0  # read and cleared at its own end
            validate.finite("x", nan)


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _queue(n, bad, device):
    """Checks 0..n-1 labelled "check i" inside one deferred block: sums, flags and float64 values in turn, those
    in ``bad`` holding a NaN/inf; returns the block's DeferredChecks and the size of its queue after each check."""
    where = ["check 0"]
    sizes = []
    with validate.deferred_checks(where=lambda: where[0]) as checks:
        for i in range(n):
            where[0] = f"check {i}"
            x = torch.ones(3, device=device)
            if i % 3 == 0:
                if i in bad:
                    x[1] = float("nan")
                validate.finite("x", x)
            elif i % 3 == 1:
                validate.flag("x", x, torch.tensor([int(i in bad)], dtype=torch.int32, device=device))
            else:
                x = x.double()
                if i in bad:
                    x[0] = float("inf")
                validate.finite("x", x)
            sizes.append((len(checks), len(checks._items), len(checks._chunks)))
    return checks, sizes


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("arrived", [True, False])
@pytest.mark.parametrize("bad,first", [((), None), ((5, 17), 5), ((16, 3), 3), ((19,), 19), ((12, 13, 14), 12)])
def test_long_deferred_blocks_compact_their_checks_and_still_name_the_first_bad_one(monkeypatch, device, arrived,
                                                                                    bad, first):
    """Every COMPACT_EVERY checks the queued values become verdicts on their way to the host (no wait): the queue
    stays bounded over a long block, and the error still names the first bad check in call order, whether it was
    compacted (read at a later compaction or at the end) or still queued. ``arrived=False``: no copy has reached
    the host before the end of the block (every compacted chunk is read then, oldest first)."""
    monkeypatch.setattr(validate, "COMPACT_EVERY", 4)
    if not arrived:
        scan = validate.DeferredChecks._scan
        monkeypatch.setattr(validate.DeferredChecks, "_scan", lambda self, wait: scan(self, wait) if wait else None)
    if first is None:
        checks, sizes = _queue(20, bad, device)
        assert [s[0] for s in sizes] == list(range(1, 21))  # len: every check queued so far
        assert max(s[1] for s in sizes) < 4  # values held: fewer than a chunk
        assert max(s[2] for s in sizes) <= (2 if arrived else 5)  # chunks held: those whose copy has not arrived
        assert len(checks) == 0  # (read at the end of the block)
        return
    with pytest.raises(ValueError, match=rf"^check {first}: x contains NaN/inf value\(s\)"):
        _queue(20, bad, device)


def test_compaction_leaves_the_slots_a_captured_graph_adds_to(monkeypatch):
    """A check taken while a CUDA graph is captured goes to a slot that every replay adds to (``accumulate``):
    compacting the eager checks after it must not read that slot early, or a NaN added by a later replay would be
    missed."""
    monkeypatch.setattr(validate, "COMPACT_EVERY", 2)
    slot = torch.zeros(1, dtype=torch.float64)
    where = ["captured"]
    with pytest.raises(ValueError, match=r"^captured: x contains NaN/inf value\(s\)"):
        with validate.deferred_checks(where=lambda: where[0]) as checks:
            checks.accumulate = lambda value: slot  # (a capture: the value goes to the graph's slot)
            validate.finite("x", torch.ones(3))
            checks.accumulate = None
            where[0] = "eager"
            for _ in range(6):
                validate.finite("x", torch.ones(3))  # (three compactions)
            slot += float("nan")  # a later replay of the graph
            assert len(checks) == 7


def test_broadcasts_to_agrees_with_torch_broadcast_shapes():
    """validate.broadcasts_to (plain Python, called for every LIF parameter at every call) against torch's own rule:
    broadcast_shapes(shape, target) == target, over every shape of up to 4 dims of sizes 0-3 and targets of up to 3."""
    import itertools
    sizes = (0, 1, 2, 3)
    shapes = [s for n in range(5) for s in itertools.product(sizes, repeat=n)]
    targets = [t for n in range(4) for t in itertools.product(sizes, repeat=n)]
    checked = disagree = 0
    for shape in shapes:
        for target in targets:
            try:
                want = tuple(torch.broadcast_shapes(shape, target)) == target
            except RuntimeError:
                want = False
            checked += 1
            disagree += validate.broadcasts_to(shape, target) != want
    assert checked == 341 * 85 and disagree == 0


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf"), float("nan")], [-float("inf")]])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_in_range_names_the_range_for_a_non_finite_value(bad, as_tensor):
    """A NaN or inf was refused as "must be finite" without the range allowed, and a tensor of many values was
    printed whole; the count is shown (a number or one-element tensor: its value), as for finite()."""
    value = torch.tensor([0.5] + bad) if as_tensor else bad[0]
    shown = f"{len(bad)} NaN/inf value(s)" if as_tensor else f"{bad[0]}"
    with pytest.raises(ValueError, match=r"^x must be finite and in \(0\.0, 1\.0\], got " + re.escape(shown) + "$"):
        validate.in_range("x", value, 0.0, 1.0, lo_open=True)
