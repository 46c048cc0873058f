"""The trainer's input codes."""
import torch


def test_the_trainers_latency_code_is_per_sample_and_orders_intensities():
    """encoder="latency" codes each input on its own: brighter fires earlier, a zero last, and a sample's
    spikes do not depend on the batch it is in (the batch-normalised log code, now "latency_log", fired every
    nonzero digit pixel in step 0 and moved one sample's times with the others')."""
    from neurosim.training.spiking_mlp import encode

    a = torch.tensor([[0.3, 0.6, 0.9, 0.0]])
    b = torch.tensor([[0.05, 0.5, 1.0, 0.2]])
    alone = encode(a, "latency", 16)
    assert torch.equal(encode(torch.cat([a, b]), "latency", 16)[:, :1], alone)
    first = alone[:, 0].argmax(0)
    assert first[3] == 15 and first[3] > first[0] > first[1] > first[2]
    assert alone.sum(0).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    a, b = a[:, :3], b[:, :3]  # (without zeros: a zero's time is the largest and sets the scale for all)
    log_alone = encode(a, "latency_log", 16)
    assert not torch.equal(encode(torch.cat([a, b]), "latency_log", 16)[:, :1], log_alone)
