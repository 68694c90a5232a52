"""AR1's latent replay pieces: the §4.6 minibatch split, the §4.7 memory update and the first-epoch staging
(``docs/avalanche-semantics.md``)."""

from __future__ import annotations

import pytest
import torch

from clfast.plugins.latent_memory import LatentReplayMemory, LatentStaging, minibatch_split, new_pattern_count


def _acts(labels: torch.Tensor, shape=(2, 3, 3)) -> torch.Tensor:
    """Latents that encode their label (so a pair can be checked after any permutation)."""
    return labels.float().reshape(-1, 1, 1, 1).expand(-1, *shape).clone() + 0.5


@pytest.mark.parametrize("n,rm,b,replay,expected", [
    (300, 1500, 128, True, (21, 107)),   # §4.6's CORe50 example
    (300, 1500, 128, False, (128, 0)),  # first experience: current patterns only
    (12000, 500, 32, True, (30, 2)),
    (5, 10, 32, True, (5, 27)),          # n + rm < B: Avalanche divides by zero; one minibatch of everything
    (1, 0, 4, True, (1, 3)),
    (40, 1, 64, True, (40, 24)),
    (1000, 0, 10, True, (10, 0)),
])
def test_minibatch_split_follows_4_6(n, rm, b, replay, expected):
    assert minibatch_split(n, rm, b, replay) == expected


def test_minibatch_split_rejects_bad_sizes():
    with pytest.raises(ValueError, match="train_mb_size"):
        minibatch_split(10, 5, 0, True)
    with pytest.raises(ValueError, match="n_current"):
        minibatch_split(-1, 5, 4, True)


@pytest.mark.parametrize("rm,i,n,size,h", [
    (1500, 0, 300, 0, 300), (1500, 0, 3000, 0, 1500), (1500, 1, 3000, 1500, 750), (1500, 4, 3000, 1500, 300),
    (1500, 1, 100, 1500, 100), (1500, 1, 3000, 200, 200), (0, 0, 10, 0, 0),
])
def test_new_pattern_count_follows_4_7(rm, i, n, size, h):
    assert new_pattern_count(rm, i, n, size) == h


def test_memory_update_fills_then_overwrites_h_distinct_slots():
    g = torch.Generator().manual_seed(0)
    mem = LatentReplayMemory(10)
    mem.allocate((2, 3, 3), torch.float32, torch.device("cpu"))
    y0 = torch.arange(10) % 3
    slots = mem.update(_acts(y0), y0, g)
    assert mem.size == 10 and slots.tolist() == list(range(10))
    assert torch.equal(mem.labels, y0)
    before_x, before_y = mem.x.clone(), mem.y.clone()
    y1 = torch.full((5,), 7)
    slots = mem.update(_acts(y1), y1, g)  # h = 10 // 2 = 5 random distinct slots
    assert len(set(slots.tolist())) == 5
    changed = (mem.y != before_y).nonzero().squeeze(1)
    assert sorted(changed.tolist()) == sorted(slots.tolist())
    assert (mem.labels == 7).sum() == 5
    kept = torch.ones(10, dtype=torch.bool)
    kept[slots] = False
    assert torch.equal(mem.x[kept], before_x[kept])
    assert torch.equal(mem.x[:, 0, 0, 0], mem.y.float() + 0.5)  # pairs intact
    with pytest.raises(ValueError, match="exceed"):
        mem.update(_acts(torch.zeros(11, dtype=torch.long)), torch.zeros(11, dtype=torch.long), g)


def test_first_fill_smaller_than_capacity_fixes_the_size():
    mem = LatentReplayMemory(10)
    mem.allocate((1,), torch.float32, torch.device("cpu"))
    mem.update(torch.ones(4, 1), torch.arange(4))
    assert mem.size == 4
    mem.update(torch.zeros(2, 1), torch.tensor([8, 9]))
    assert mem.size == 4 and sorted(mem.labels.tolist()).count(8) == 1


def test_shuffle_keeps_latents_and_labels_together_and_batches_clip():
    g = torch.Generator().manual_seed(1)
    mem = LatentReplayMemory(20)
    mem.allocate((2, 3, 3), torch.float32, torch.device("cpu"))
    y = torch.arange(20)
    mem.update(_acts(y), y)
    mem.shuffle_(g)
    assert not torch.equal(mem.labels, y) and sorted(mem.labels.tolist()) == list(range(20))
    assert torch.equal(mem.x[:, 0, 0, 0], mem.y.float() + 0.5)
    x, yb = mem.batch(15, 25, torch.device("cpu"))
    assert x.shape[0] == 5 and yb.shape == (5,)
    x, yb = mem.batch(30, 40, torch.device("cpu"))
    assert x.shape == (0, 2, 3, 3) and yb.shape == (0,)


def test_staging_keeps_h_random_patterns_with_their_own_labels():
    g = torch.Generator().manual_seed(3)
    n, h = 50, 12
    staging = LatentStaging(n, h, g, torch.device("cpu"))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(9))  # a "shuffled loader"
    labels = order % 5
    for start in range(0, n, 8):
        y = labels[start:start + 8]
        staging.add(_acts(y), y)
    x, y = staging.collected()
    assert x.shape[0] == h and y.shape == (h,)
    assert torch.equal(x[:, 0, 0, 0], y.float() + 0.5)  # each latent carries its own label
    with pytest.raises(RuntimeError, match="more than"):
        staging.add(_acts(labels[:1]), labels[:1])


def test_staging_of_an_epoch_stopped_early_returns_what_it_saw():
    staging = LatentStaging(10, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    y = torch.arange(4)
    staging.add(_acts(y), y)
    x, got = staging.collected()
    assert sorted(got.tolist()) == [0, 1, 2, 3] and torch.equal(x[:, 0, 0, 0], got.float() + 0.5)
    assert LatentStaging(5, 0, None, torch.device("cpu")).collected() is None
    with pytest.raises(ValueError, match="h must be"):
        LatentStaging(5, 6, None, torch.device("cpu"))


def test_memory_state_dict_round_trip_and_validation():
    mem = LatentReplayMemory(8)
    mem.allocate((3,), torch.float32, torch.device("cpu"))
    mem.update(torch.randn(6, 3), torch.arange(6))
    sd = mem.state_dict()
    other = LatentReplayMemory(8)
    other.load_state_dict(sd, torch.device("cpu"))
    assert other.size == 6 and torch.equal(other.latents, mem.latents) and torch.equal(other.labels, mem.labels)
    with pytest.raises(ValueError, match="capacity"):
        LatentReplayMemory(9).load_state_dict(sd, torch.device("cpu"))
    bad = dict(sd, size=7)
    with pytest.raises(ValueError, match="size"):
        LatentReplayMemory(8).load_state_dict(bad, torch.device("cpu"))
    empty = LatentReplayMemory(8)
    empty.load_state_dict(LatentReplayMemory(8).state_dict(), torch.device("cpu"))
    assert not empty.allocated and empty.size == 0


def test_memory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rm_sz"):
        LatentReplayMemory(-1)
    with pytest.raises(ValueError, match="cpu or cuda"):
        LatentReplayMemory(4, device="meta")
    mem = LatentReplayMemory(4)
    with pytest.raises(RuntimeError, match="allocate"):
        mem.update(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    mem.allocate((2,), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="do not match"):
        mem.update(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_pinned_memory_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        LatentReplayMemory(4, pin_memory=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_memory_storage_is_pinned_and_copies_to_the_device():
    mem = LatentReplayMemory(4, pin_memory=True)
    dev = mem.resolve_device(torch.device("cuda"), (2,), torch.float32)
    mem.allocate((2,), torch.float32, dev)
    assert mem.x.is_pinned() and mem.y.is_pinned()
    mem.update(torch.ones(4, 2), torch.arange(4))
    x, y = mem.batch(0, 3, torch.device("cuda"))
    assert x.is_cuda and y.tolist() == [0, 1, 2]
