"""neurosim.validate.finite: one float64 sum decides, an exact count confirms and names the bad values."""
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
