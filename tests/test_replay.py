"""ReplayPlugin and its storage policies: reservoir sampling against a plain-Python algorithm R fed the same draws
(and against its inclusion probability), class-balanced quotas against hand-counted ones, the memory's contents
and allocation, the extended minibatch, training with Naive and with every regulariser, checkpoints, bad input."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clfast.evaluation import EvaluationPlugin
from clfast.plugins import PLUGINS, ClassBalancedBuffer, MASPlugin, ReplayPlugin, ReservoirSamplingBuffer
from clfast.plugins.replay_memory import reservoir_slots
from clfast.strategies import regularized
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.testing.plugin_fixtures import (
    N_FEATURES,
    LossRecorder,
    MiniStrategy,
    assert_losses_close,
    assert_models_close,
    mlp,
    naive,
    seeded,
    train_stream,
)
from clfast.training import checkpoint as ck

CPU = torch.device("cpu")
ID_SCALE = 1024.0


def sample_id(value: float | torch.Tensor) -> int:
    return round(float(value) * ID_SCALE)


def id_stream(labels_per_exp: list[list[int]], seed: int = 0) -> Stream:
    """Experience e holds the given labels and task label e; feature 0 of every sample is its global id (0, 1, …
    over the stream) / ``ID_SCALE`` (exact in float32, small enough to train on), so a row names its sample."""
    g = torch.Generator().manual_seed(seed)
    s, next_id = Stream("train"), 0
    for e, labels in enumerate(labels_per_exp):
        y = torch.tensor(labels)
        x = torch.randn(len(labels), N_FEATURES, generator=g) + 0.5 * y.float().unsqueeze(1)
        x[:, 0] = torch.arange(next_id, next_id + len(labels), dtype=torch.float32) / ID_SCALE
        next_id += len(labels)
        s.append(Experience(TensorExperienceDataset(x, y, torch.full((len(labels),), e)), e, s, task=e))
    return s


def six_classes(n_per_exp: int = 20) -> Stream:
    """Three class-incremental experiences, classes {2e, 2e+1}, ids as in :func:`id_stream`."""
    return id_stream([[2 * e + i % 2 for i in range(n_per_exp)] for e in range(3)])


def host(exp: Experience) -> SimpleNamespace:
    """The attributes a storage policy's update reads."""
    return SimpleNamespace(experience=exp, device=CPU)


def stored_ids(policy) -> list[int]:
    return [sample_id(v) for v in policy.x[: policy.size, 0].tolist()]


def lookup(exps: Stream) -> dict[int, tuple[torch.Tensor, int, int]]:
    """id -> (x, y, t) of every sample of the stream."""
    out = {}
    for exp in exps:
        ds = exp.dataset
        for i in range(len(ds)):
            out[sample_id(ds.x[i, 0])] = (ds.x[i], int(ds.targets[i]), int(ds.targets_task_labels[i]))
    return out


# ---------------------------------------------------------------------------------------------- reservoir


def algorithm_r(sizes: list[int], capacity: int, generator: torch.Generator) -> list[int]:
    """Vitter's algorithm R, one sample at a time: sample n (0-based) fills slot n while the reservoir is not
    full, else replaces slot j = ⌊u·(n+1)⌋ if j < capacity, u drawn for that sample. Returns the slots' ids."""
    reservoir: list[int] = []
    n = 0
    for size in sizes:
        for _ in range(size):
            if n < capacity:
                reservoir.append(n)
            else:
                u = torch.rand(1, generator=generator, dtype=torch.float64).item()
                j = min(int(u * (n + 1)), n)
                if j < capacity:
                    reservoir[j] = n
            n += 1
    return reservoir


@pytest.mark.parametrize(("sizes", "capacity"), [([7, 13, 9], 5), ([3, 2, 40], 8), ([30], 30), ([4, 4], 20)])
def test_reservoir_is_algorithm_r_with_the_same_draws(sizes, capacity):
    exps = id_stream([[i % 3 for i in range(n)] for n in sizes])
    policy = ReservoirSamplingBuffer(capacity, seed=7)
    ref_gen = torch.Generator()
    ref_gen.set_state(policy.generator.get_state())
    for k, exp in enumerate(exps):
        policy.update(host(exp))
        expected = algorithm_r(sizes[: k + 1], capacity, copy.deepcopy(ref_gen))
        assert stored_ids(policy) == expected
        assert policy.seen == sum(sizes[: k + 1]) and policy.size == len(expected)


def test_reservoir_keeps_each_sample_with_probability_capacity_over_seen():
    """1000 seeded runs of 20 samples in two batches into 5 slots: every sample is in with probability 1/4."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    trials = 1000
    for _ in range(trials):
        memory: list[int] = []
        seen = 0
        for n_new in (8, 12):
            slots, sources = reservoir_slots(seen, n_new, 5, g)
            for slot, src in zip(slots.tolist(), sources.tolist(), strict=True):
                if slot == len(memory):
                    memory.append(seen + src)
                else:
                    memory[slot] = seen + src
            seen += n_new
        assert len(memory) == len(set(memory)) == 5
        counts[memory] += 1
    z = (counts / trials - 0.25) / math.sqrt(0.25 * 0.75 / trials)
    assert torch.all(z.abs() < 4), z
    assert float((z**2).sum()) < 45  # chi-square, 19 degrees of freedom: p ≈ 0.0007


def test_reservoir_in_training_follows_algorithm_r():
    exps = id_stream([[i % 6 for i in range(n)] for n in (12, 9, 15)])
    plugin = ReplayPlugin(10, storage_policy="reservoir", seed=3)
    ref_gen = torch.Generator()
    ref_gen.set_state(plugin.storage_policy.generator.get_state())
    train_stream(naive(seeded(mlp), [plugin], mb=4, epochs=1), exps)
    assert stored_ids(plugin.storage_policy) == algorithm_r([12, 9, 15], 10, ref_gen)


# ---------------------------------------------------------------------------------------------- class-balanced


def test_class_balanced_quotas_after_each_experience_match_hand_counts():
    """10 slots. After exp 0 (classes 5, 2): 5 each. Exp 1 adds 0 and 7 (7 has one sample): 10 // 4 = 2 and the
    2 remaining slots go to the first-seen classes 2, 5 (3 each); 7 fills 1 of its 2. Exp 2 adds 1, 3, 6: 10 // 7
    = 1, remainder 3 to 2, 5, 0 (2 each)."""
    exps = id_stream([[5, 2] * 8, [0] * 8 + [7], [1, 3, 6] * 4])
    policy = ClassBalancedBuffer(10, seed=1)
    expected = [{2: 5, 5: 5}, {2: 3, 5: 3, 0: 2, 7: 1}, {2: 2, 5: 2, 0: 2, 7: 1, 1: 1, 3: 1, 6: 1}]
    quotas = [{2: 5, 5: 5}, {2: 3, 5: 3, 0: 2, 7: 2}, {2: 2, 5: 2, 0: 2, 7: 1, 1: 1, 3: 1, 6: 1}]
    first_stored: dict[int, list[int]] = {}
    for exp, counts, quota in zip(exps, expected, quotas, strict=True):
        policy.update(host(exp))
        y = policy.y[: policy.size].tolist()
        assert {c: y.count(c) for c in set(y)} == counts  # read from the memory itself
        assert policy.quotas() == quota and policy.size == sum(counts.values())
        for c, rows in policy.class_slots.items():  # a shrinking class keeps the samples it stored first
            ids = [sample_id(policy.x[r, 0]) for r in rows]
            first_stored.setdefault(c, ids)
            assert ids == first_stored[c][: len(ids)]
            assert all(int(policy.y[r]) == c for r in rows)
        assert sorted(r for rows in policy.class_slots.values() for r in rows) == list(range(policy.size))
    assert policy.classes == [2, 5, 0, 7, 1, 3, 6]


def test_a_class_seen_again_fills_its_free_quota_with_new_samples():
    exps = id_stream([[0] * 2 + [1] * 6, [0] * 5])
    policy = ClassBalancedBuffer(8, seed=0)
    policy.update(host(exps[0]))
    assert policy.class_slots == {0: [0, 1], 1: [2, 3, 4, 5]}
    policy.update(host(exps[1]))  # class 0 had 2 of its 4 slots: 2 of the 5 new samples join
    ids = [sample_id(policy.x[r, 0]) for r in policy.class_slots[0]]
    assert ids[:2] == [0, 1] and len(ids) == 4 and all(8 <= i < 13 for i in ids[2:])


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_stored_rows_are_exact_copies_with_their_labels(policy):
    exps = six_classes()
    plugin = ReplayPlugin(9, storage_policy=policy, seed=2)
    train_stream(naive(seeded(mlp), [plugin], mb=8, epochs=1), exps)
    mem, samples = plugin.storage_policy, lookup(exps)
    assert mem.size == 9
    for r in range(mem.size):
        x, y, t = samples[sample_id(mem.x[r, 0])]
        assert torch.equal(mem.x[r], x) and int(mem.y[r]) == y and int(mem.t[r]) == t
    assert len(set(stored_ids(mem))) == 9


# ---------------------------------------------------------------------------------------------- the minibatch


class BatchProbe:
    """Records (x, y, t) of the minibatch: ``mbatch`` in ``before_training_iteration`` (placed before the replay
    plugin) or the strategy's ``mb_x``/``mb_y``/``mb_task_id`` in ``before_forward``."""

    def __init__(self, hook: str) -> None:
        self.batches: list[tuple[torch.Tensor, ...]] = []
        setattr(self, hook, self._record_mbatch if hook == "before_training_iteration" else self._record_views)

    def _record_mbatch(self, strategy, **kwargs):
        self.batches.append(tuple(v.clone() for v in strategy.mbatch))

    def _record_views(self, strategy, **kwargs):
        self.batches.append((strategy.mb_x.clone(), strategy.mb_y.clone(), strategy.mb_task_id.clone()))


def test_minibatches_hold_the_current_samples_then_distinct_memory_rows():
    exps = six_classes()
    plugin = ReplayPlugin(12, storage_policy="class_balanced", batch_size_mem=5, seed=4)
    before, after = BatchProbe("before_training_iteration"), BatchProbe("before_forward")
    seen_by_criterion: list[int] = []

    def criterion(out, y):
        seen_by_criterion.append(len(y))
        assert out.shape[0] == len(y)
        return nn.functional.cross_entropy(out, y)

    s = naive(seeded(mlp), [before, plugin, after], mb=8, epochs=1)
    s._criterion = criterion
    memories = []
    for exp in exps:
        n0 = len(before.batches)
        rows = plugin.storage_policy.rows()  # the memory does not change during an experience
        snapshot = None if rows is None else [v.clone() for v in rows]
        memory = {} if rows is None else {sample_id(i): r for r, i in enumerate(snapshot[0][:, 0].tolist())}
        train_stream(s, [exp])
        draws = set()
        for cur, ext in zip(before.batches[n0:], after.batches[n0:], strict=True):
            n = len(cur[0])
            for a, b in zip(cur, ext, strict=True):
                assert torch.equal(b[:n], a)  # current samples first, unchanged
            tail = ext[0][n:]
            assert len(tail) == (0 if not memory else min(5, len(memory)))
            ids = [sample_id(v) for v in tail[:, 0].tolist()]
            assert len(set(ids)) == len(ids)  # without replacement within a minibatch
            for row, y, t, i in zip(tail, ext[1][n:], ext[2][n:], ids, strict=True):
                r = memory[i]
                assert torch.equal(row, snapshot[0][r]) and y == snapshot[1][r] and t == snapshot[2][r]
                assert t < exp.current_experience
            draws.add(tuple(ids))
        memories.append(len(memory))
        assert len(draws) > 1 or not memory  # each minibatch draws afresh
    assert memories == [0, 12, 12]
    assert seen_by_criterion == [len(b[1]) for b in after.batches]


def test_memory_is_allocated_once_lazily_on_the_training_device():
    exps = six_classes()
    plugin = ReplayPlugin(10, storage_policy="reservoir")
    s = naive(seeded(mlp), [plugin], mb=8, epochs=1)
    assert plugin.storage_policy.x is None
    pointers = []
    for exp in exps:
        train_stream(s, [exp])
        mem = plugin.storage_policy
        assert mem.x.shape == (10, N_FEATURES) and mem.y.shape == mem.t.shape == (10,)
        assert mem.x.device == s.device and mem.y.dtype == torch.long
        pointers.append((mem.x.data_ptr(), mem.y.data_ptr(), mem.t.data_ptr()))
    assert len(set(pointers)) == 1
    plugin.load_state_dict(plugin.state_dict())  # loading into an existing memory keeps it
    assert (mem.x.data_ptr(), mem.y.data_ptr(), mem.t.data_ptr()) == pointers[0]


# ---------------------------------------------------------------------------------------------- training


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_naive_with_replay_trains_and_differs_from_naive():
    exps = six_classes()
    rec = LossRecorder()
    with_replay = naive(seeded(mlp), [ReplayPlugin(12, storage_policy="class_balanced"), rec], mb=8)
    start = _params(with_replay.model)
    train_stream(with_replay, exps)
    plain = naive(seeded(mlp), [], mb=8)
    train_stream(plain, exps)
    assert rec.losses and all(math.isfinite(v) for v in rec.losses)
    assert all(not torch.equal(start[n], p) for n, p in with_replay.model.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), with_replay.model.parameters(),
                                                     strict=True))


def test_runs_in_a_strategy_with_only_avalanches_attributes():
    exps = six_classes()
    model = seeded(mlp)
    rec_a, rec_b = LossRecorder(), LossRecorder()
    sa = naive(model, [ReplayPlugin(10, seed=5), rec_a])
    mb = copy.deepcopy(model)
    sb = MiniStrategy(mb, torch.optim.SGD(mb.parameters(), lr=0.1), [ReplayPlugin(10, seed=5), rec_b])
    train_stream(sa, exps)
    train_stream(sb, exps)
    assert_losses_close(rec_a, rec_b, rtol=1e-6)
    assert_models_close(sa.model, sb.model, rtol=1e-6)


class CountingMLP(nn.Module):
    """The fixtures' MLP, recording the batch size of every forward with the phase a plugin set."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.phase, self.calls = mlp(), "train", []

    def forward(self, x):
        self.calls.append((self.phase, len(x)))
        return self.net(x)


class Phase:
    """Training inside an epoch, "pass" between the last epoch and the next experience (the importance passes)."""

    def __init__(self, model: CountingMLP) -> None:
        self.model = model

    def before_training_epoch(self, strategy, **kwargs):
        self.model.phase = "train"

    def after_training_epoch(self, strategy, **kwargs):
        self.model.phase = "pass"


#: Strengths at which the penalty shows within 3 short experiences (the command line's are tuned for MNIST).
STRENGTH = {"mas": 2.0, "rwalk": 2.0, "si": 10.0, "ewc": 5.0}


@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_every_regularizer_trains_with_replay_and_its_passes_see_the_experience_only(kind):
    exps = six_classes()
    torch.manual_seed(0)
    model = CountingMLP()
    rec = LossRecorder()
    s = regularized(kind, STRENGTH[kind])(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(),
                                            train_mb_size=8, train_epochs=2, evaluator=EvaluationPlugin(),
                                            plugins=[ReplayPlugin(12, storage_policy="class_balanced"), Phase(model),
                                                     rec])
    start = _params(model)
    per_exp = []
    for exp in exps:
        model.calls.clear()
        train_stream(s, [exp])
        per_exp.append(model.calls[:])
    assert rec.losses and all(math.isfinite(v) for v in rec.losses)
    assert all(not torch.equal(start[n], p) for n, p in model.named_parameters())
    for e, calls in enumerate(per_exp):
        train = [n for phase, n in calls if phase == "train"]
        passed = [n for phase, n in calls if phase == "pass"]
        assert max(train) == (8 if e == 0 else 16)  # 8 current + 8 replayed (batch_size_mem = train_mb_size)
        # MAS's importance and EWC's Fisher pass over the experience's own 20 samples, without replay
        assert sum(passed) == (20 if kind in ("mas", "ewc") else 0)


# ---------------------------------------------------------------------------------------------- state


def _strategy(policy: str, init_seed: int):
    torch.manual_seed(init_seed)
    plugins = [ReplayPlugin(10, storage_policy=policy, batch_size_mem=6, seed=11), MASPlugin(lambda_reg=0.5)]
    return naive(mlp(), plugins, mb=8, epochs=2)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_a_checkpoint_in_the_middle_resumes_exactly(policy, tmp_path):
    exps = six_classes()
    torch.manual_seed(123)
    whole = _strategy(policy, 0)
    whole.train(exps[0])
    whole.train(exps[1])  # replays, so the minibatch generator's state is in the checkpoint too
    ck.save_checkpoint(ck.strategy_state_dict(whole), tmp_path / "ckpt.pt")
    whole.train(exps[2])

    resumed = _strategy(policy, 7)  # another initialisation and other random states: all must come from the file
    torch.manual_seed(999)
    ck.load_strategy_state_dict(resumed, ck.load_checkpoint(tmp_path / "ckpt.pt"))
    resumed.train(exps[2])
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ma, mb = whole.plugins[0].storage_policy, resumed.plugins[0].storage_policy
    for a, b in zip(ma.rows(), mb.rows(), strict=True):
        assert torch.equal(a, b)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _bad_states(sd):
    pol = sd["policy"]
    n = pol["size"]
    bad = [({**sd, "plugin": "MASPlugin"}, ValueError), ({**sd, "version": 9}, ValueError),
           ({**sd, "mem_size": 11}, ValueError), ({**sd, "policy": {**pol, "policy": "fifo"}}, ValueError),
           ({**sd, "policy": {**pol, "size": n - 1}}, ValueError),
           ({**sd, "policy": {**pol, "x": pol["x"][:-1]}}, ValueError),
           ({**sd, "policy": {**pol, "y": pol["y"].float()}}, ValueError),
           ({**sd, "policy": {**pol, "generator": torch.zeros(3, dtype=torch.uint8)}}, ValueError),
           ({**sd, "draws": ["cpu", torch.zeros(3, dtype=torch.uint8)]}, ValueError),
           ({**sd, "draws": "cpu"}, ValueError), ([1, 2], TypeError), ({**sd, "policy": None}, TypeError)]
    if pol["policy"] == "reservoir":
        bad.append(({**sd, "policy": {**pol, "seen": n - 1}}, ValueError))
    else:
        slots = [list(v) for v in pol["class_slots"]]
        slots[0][0], slots[1][0] = slots[1][0], slots[0][0]  # rows of one class listed under another
        bad += [({**sd, "policy": {**pol, "class_slots": slots}}, ValueError),
                ({**sd, "policy": {**pol, "class_slots": [[0, 0], *slots[1:]]}}, ValueError),
                ({**sd, "policy": {**pol, "classes": pol["classes"][:-1]}}, ValueError)]
    return bad


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_a_bad_state_dict_is_refused_and_changes_nothing(policy):
    plugin = ReplayPlugin(10, storage_policy=policy)
    s = naive(seeded(mlp), [plugin], mb=8, epochs=1)
    train_stream(s, six_classes()[:2])
    before = plugin.state_dict()
    for bad, err in _bad_states(before):
        with pytest.raises(err):
            plugin.load_state_dict(bad)
        assert _same(plugin.state_dict(), before)
    other = ReplayPlugin(10, storage_policy="class_balanced" if policy == "reservoir" else "reservoir")
    with pytest.raises(ValueError, match="not"):
        other.load_state_dict(before)
    fresh = ReplayPlugin(10, storage_policy=policy)
    fresh.load_state_dict(before)
    assert _same(fresh.state_dict(), before)


def test_a_dataset_that_fails_to_read_leaves_the_policy_unchanged():
    exps = six_classes()

    class Broken(TensorExperienceDataset):
        def __getitem__(self, i):
            if i >= 5:
                raise RuntimeError("unreadable sample")
            return super().__getitem__(i)

    for policy in (ReservoirSamplingBuffer(30), ClassBalancedBuffer(30)):
        policy.update(host(exps[0]))
        before = policy.state_dict()
        ds = exps[1].dataset
        broken = SimpleNamespace(dataset=Broken(ds.x, ds.targets, ds.targets_task_labels))
        with pytest.raises(RuntimeError, match="unreadable"):
            policy.update(host(broken))
        assert _same(policy.state_dict(), before)


# ---------------------------------------------------------------------------------------------- bad input

BAD = [({"mem_size": 0}, ValueError), ({"mem_size": -3}, ValueError), ({"mem_size": 2.5}, TypeError),
       ({"mem_size": True}, TypeError), ({"storage_policy": "fifo"}, ValueError), ({"storage_policy": 3}, TypeError),
       ({"storage_policy": ClassBalancedBuffer(7)}, ValueError), ({"batch_size_mem": 0}, ValueError),
       ({"batch_size_mem": "8"}, TypeError), ({"seed": -1}, ValueError)]


@pytest.mark.parametrize(("kwargs", "err"), BAD, ids=[str(k) for k, _ in BAD])
def test_bad_arguments_are_refused_at_construction(kwargs, err):
    with pytest.raises(err):
        ReplayPlugin(**{"mem_size": 10, **kwargs})


def test_bad_policy_arguments_and_minibatches_are_refused():
    for cls in (ReservoirSamplingBuffer, ClassBalancedBuffer):
        with pytest.raises(ValueError, match="max_size"):
            cls(0)
        with pytest.raises(TypeError, match="seed"):
            cls(5, seed=1.0)
    plugin = ReplayPlugin(5, storage_policy=ReservoirSamplingBuffer(5))
    plugin.after_training_exp(host(six_classes()[0]))
    strategy = SimpleNamespace(train_mb_size=4, mbatch=[torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)])
    with pytest.raises(ValueError, match="shape"):
        plugin.before_training_iteration(strategy)
    strategy.mbatch = [torch.zeros(4, N_FEATURES), torch.zeros(4, dtype=torch.long)] * 2
    with pytest.raises(ValueError, match="elements"):
        plugin.before_training_iteration(strategy)
    strategy.mbatch = [torch.zeros(4, N_FEATURES, dtype=torch.float64), torch.zeros(4, dtype=torch.long)]
    with pytest.raises(ValueError, match="dtype"):
        plugin.before_training_iteration(strategy)
    strategy.mbatch = [torch.zeros(4, N_FEATURES), torch.zeros(4, dtype=torch.long)]  # [x, y]: no task labels
    plugin.before_training_iteration(strategy)
    assert len(strategy.mbatch) == 2 and strategy.mbatch[0].shape == (8, N_FEATURES)
