import pytest
import torch

from r1.rewards.length import soft_overlong_penalty


def test_soft_overlong_penalty_hand_worked():
    # L_max 100, L_cache 20: free up to 80; 90 -> (80 - 90) / 20 = -0.5; 100 -> -1; 120 -> -1.
    got = soft_overlong_penalty(torch.tensor([10, 80, 81, 90, 100, 120]), 100, 20)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.05, -0.5, -1.0, -1.0])
    assert soft_overlong_penalty(torch.tensor([100, 101]), 100, 0).tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="cache_tokens=200"):
        soft_overlong_penalty(torch.tensor([1]), 100, 200)
