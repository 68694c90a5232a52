"""Scenarios: datasets, streams, nc/ni/tensors/permuted builders and Split-Digits.

Synthetic inputs carry their own row index (``x[i] == i``), so every item of every experience says
where it came from and the tests can check partitions and targets against the original arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from clfast.scenarios import (
    SCENARIOS,
    ClassificationDataset,
    CLStream,
    PixelsPermutation,
    concat_datasets,
    digits_datasets,
    nc_benchmark,
    ni_benchmark,
    permuted_benchmark,
    split_digits,
    tensors_benchmark,
)

N_TRAIN, N_TEST = 300, 120


def indexed_data(n: int, classes: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x[i] = [i, i, i] (float), y: every class present, shuffled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes, dtype=torch.long).repeat(n // len(classes) + 1)[:n]
    y = y[torch.randperm(n, generator=g)]
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    return x, y


@pytest.fixture
def data10():
    xtr, ytr = indexed_data(N_TRAIN, list(range(10)), seed=1)
    xte, yte = indexed_data(N_TEST, list(range(10)), seed=2)
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte), ytr, yte


def source_rows(dataset: ClassificationDataset) -> torch.Tensor:
    """The original row of each item (inputs are their row index)."""
    return torch.stack([dataset[i][0][0] for i in range(len(dataset))]).long() if len(dataset) else torch.empty(0)


# ------------------------------------------------------------------------------------------------
# nc_benchmark


def test_nc_each_class_in_exactly_one_experience_and_experiences_partition_the_data(data10):
    train, test, ytr, yte = data10
    bench = nc_benchmark(train, test, 5, task_labels=False, seed=3)
    assert bench.n_experiences == 5 and len(bench.test_stream) == 5 and bench.n_classes == 10
    for stream, y_orig, n in ((bench.train_stream, ytr, N_TRAIN), (bench.test_stream, yte, N_TEST)):
        seen_classes: list[int] = []
        rows = []
        for exp in stream:
            exp_rows = source_rows(exp.dataset)
            rows.append(exp_rows)
            assert torch.equal(exp.dataset.targets, y_orig[exp_rows])  # targets are the original labels
            assert exp.classes_in_this_experience == sorted(set(y_orig[exp_rows].tolist()))
            assert len(exp.classes_in_this_experience) == 2
            seen_classes += exp.classes_in_this_experience
        assert sorted(seen_classes) == list(range(10))  # each class exactly once
        assert torch.equal(torch.sort(torch.cat(rows)).values, torch.arange(n))  # a partition
    for tr_exp, te_exp in zip(bench.train_stream, bench.test_stream, strict=True):
        assert tr_exp.classes_in_this_experience == te_exp.classes_in_this_experience
        assert tr_exp.dataset.transform_group == "train" and te_exp.dataset.transform_group == "eval"


def test_nc_class_order_is_seeded_like_avalanche_and_leaves_the_global_rng_alone(data10):
    train, test, _, _ = data10
    state = torch.random.get_rng_state()
    orders = {s: nc_benchmark(train, test, 5, False, seed=s).classes_order for s in (0, 1, 2)}
    assert torch.equal(state, torch.random.get_rng_state())
    assert nc_benchmark(train, test, 5, False, seed=1).classes_order == orders[1]
    assert len({tuple(o) for o in orders.values()}) == 3
    for s, order in orders.items():  # Avalanche: torch.manual_seed(seed); classes[torch.randperm(n)]
        torch.manual_seed(s)
        assert order == torch.arange(10)[torch.randperm(10)].tolist()
    torch.set_rng_state(state)
    bench = nc_benchmark(train, test, 5, False, seed=1)
    assert [sorted(s) for s in bench.original_classes_in_exp] == [sorted(orders[1][2 * i:2 * i + 2]) for i in range(5)]
    assert nc_benchmark(train, test, 5, False, shuffle=False).classes_order == list(range(10))


def test_nc_fixed_class_order_is_honoured_and_may_name_a_subset(data10):
    train, test, ytr, _ = data10
    order = [9, 0, 4, 1, 7, 2, 8, 3, 6, 5]
    bench = nc_benchmark(train, test, 5, False, seed=123, fixed_class_order=order)
    assert bench.classes_order == order
    assert [exp.classes_in_this_experience for exp in bench.train_stream] == [sorted(order[i:i + 2])
                                                                             for i in range(0, 10, 2)]
    sub = nc_benchmark(train, test, 2, False, fixed_class_order=[3, 1, 7, 5])
    assert sub.n_classes == 4 and [e.classes_in_this_experience for e in sub.train_stream] == [[1, 3], [5, 7]]
    assert sum(len(e.dataset) for e in sub.train_stream) == int(torch.isin(ytr, torch.tensor([1, 3, 5, 7])).sum())
    with pytest.raises(ValueError, match="absent"):
        nc_benchmark(train, test, 5, False, fixed_class_order=[*range(9), 42])
    with pytest.raises(ValueError, match="repeats"):
        nc_benchmark(train, test, 5, False, fixed_class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_nc_per_exp_classes_sets_experience_sizes(data10):
    train, test, _, _ = data10
    bench = nc_benchmark(train, test, 4, False, seed=0, per_exp_classes={0: 4})
    assert bench.n_classes_per_exp == [4, 2, 2, 2]
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [4, 2, 2, 2]
    assert nc_benchmark(train, test, 3, False, per_exp_classes={0: 5, 2: 1}).n_classes_per_exp == [5, 4, 1]
    for bad in ({4: 2}, {-1: 2}, {0: 11}, {0: 3}, {0: 2, 1: 2, 2: 2, 3: 2}, {0: -1}):
        with pytest.raises(ValueError):
            nc_benchmark(train, test, 4, False, per_exp_classes=bad)
    with pytest.raises(TypeError):
        nc_benchmark(train, test, 4, False, per_exp_classes=[4, 2, 2, 2])


def test_nc_class_ids_from_zero_remaps_targets(data10):
    train, test, ytr, yte = data10
    first = nc_benchmark(train, test, 5, False, seed=4, class_ids_from_zero_from_first_exp=True)
    order = first.classes_order_original_ids
    assert first.classes_order == list(range(10))
    for stream, y_orig in ((first.train_stream, ytr), (first.test_stream, yte)):
        for exp in stream:
            expected = torch.tensor([order.index(c) for c in y_orig[source_rows(exp.dataset)].tolist()])
            assert torch.equal(exp.dataset.targets, expected)
            assert exp.classes_in_this_experience == [2 * exp.current_experience, 2 * exp.current_experience + 1]
    each = nc_benchmark(train, test, 5, False, seed=4, class_ids_from_zero_in_each_exp=True)
    assert each.classes_order == [0, 1] * 5
    for exp in each.train_stream:
        exp_order = order[2 * exp.current_experience:2 * exp.current_experience + 2]
        expected = torch.tensor([exp_order.index(c) for c in ytr[source_rows(exp.dataset)].tolist()])
        assert torch.equal(exp.dataset.targets, expected)
    assert each.class_mapping[order[1]] == 1 and first.class_mapping[order[7]] == 7
    with pytest.raises(ValueError, match="mutually exclusive"):
        nc_benchmark(train, test, 5, False, class_ids_from_zero_from_first_exp=True,
                     class_ids_from_zero_in_each_exp=True)


def test_nc_task_labels_give_experience_i_task_i(data10):
    train, test, _, _ = data10
    ti = nc_benchmark(train, test, 5, task_labels=True, seed=0)
    for stream in (ti.train_stream, ti.test_stream):
        for exp in stream:
            assert exp.task_labels == [exp.current_experience] and exp.task_label == exp.current_experience
            assert torch.all(exp.dataset.targets_task_labels == exp.current_experience)
    ci = nc_benchmark(train, test, 5, task_labels=False, seed=0)
    assert all(exp.task_labels == [0] for exp in ci.test_stream)
    exp = CLStream("train", [ClassificationDataset(torch.zeros(4, 2), [0, 1, 0, 1], [0, 0, 1, 1])])[0]
    assert exp.task_labels == [0, 1]
    with pytest.raises(ValueError, match="not exactly one"):
        _ = exp.task_label


def test_experience_class_timeline(data10):
    train, test, _, _ = data10
    bench = nc_benchmark(train, test, 5, False, seed=7)
    per_exp = [exp.classes_in_this_experience for exp in bench.train_stream]
    for i, exp in enumerate(bench.train_stream):
        assert exp.previous_classes == sorted(c for cl in per_exp[:i] for c in cl)
        assert exp.classes_seen_so_far == sorted(c for cl in per_exp[:i + 1] for c in cl)
        assert exp.future_classes == sorted(c for cl in per_exp[i + 1:] for c in cl)
    assert bench.classes_in_experience["train"] == [set(c) for c in per_exp]
    assert bench.classes_in_exp_range(1, 3) == per_exp[1] + per_exp[2]


def test_nc_bad_arguments_raise_clear_errors(data10):
    train, test, _, _ = data10
    with pytest.raises(ValueError, match="cannot be split evenly"):
        nc_benchmark(train, test, 3, False)
    with pytest.raises(ValueError, match="n_experiences must be >= 1"):
        nc_benchmark(train, test, 0, False)
    with pytest.raises(TypeError, match="n_experiences must be an int"):
        nc_benchmark(train, test, 2.0, False)
    with pytest.raises(ValueError, match="one_dataset_per_exp"):
        nc_benchmark(train, test, 2, False, one_dataset_per_exp=True)
    with pytest.raises(TypeError, match="integers"):
        nc_benchmark(TensorDataset(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 2.0])), test, 1, False)


def test_nc_with_dataset_lists_renumbers_classes_and_one_dataset_per_exp(data10):
    train, _, ytr, _ = data10
    parts_tr = [TensorDataset(train.tensors[0][:150], ytr[:150] % 3), TensorDataset(train.tensors[0][150:],
                                                                                   ytr[150:] % 2)]
    parts_te = [TensorDataset(torch.zeros(6, 3), torch.tensor([0, 1, 2] * 2)),
                TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1] * 2))]
    bench = nc_benchmark(parts_tr, parts_te, 2, True, one_dataset_per_exp=True, shuffle=False)
    assert [e.classes_in_this_experience for e in bench.train_stream] == [[0, 1, 2], [3, 4]]
    assert torch.equal(source_rows(bench.train_stream[1].dataset), torch.arange(150, 300))
    assert torch.equal(bench.train_stream[1].dataset.targets, ytr[150:] % 2 + 3)
    assert bench.train_stream[1].task_label == 1 and len(bench.test_stream[1].dataset) == 4
    flipped = nc_benchmark(parts_tr, parts_te, 2, False, one_dataset_per_exp=True, seed=0)
    order = torch.randperm(2, generator=torch.Generator().manual_seed(0)).tolist()
    assert [len(e.dataset) for e in flipped.train_stream] == [150 for _ in order]
    assert [len(e.classes_in_this_experience) for e in flipped.train_stream] == [[3, 2][k] for k in order]


# ------------------------------------------------------------------------------------------------
# ni_benchmark


def test_ni_partitions_instances_and_has_one_test_experience(data10):
    train, test, ytr, _ = data10
    state = torch.random.get_rng_state()
    bench = ni_benchmark(train, test, 7, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    rows = [source_rows(e.dataset) for e in bench.train_stream]
    assert torch.equal(torch.sort(torch.cat(rows)).values, torch.arange(N_TRAIN))
    sizes = [len(r) for r in rows]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == N_TRAIN
    for exp, r in zip(bench.train_stream, rows, strict=True):
        assert torch.equal(exp.dataset.targets, ytr[r])
    assert [r.tolist() for r in rows] == bench.train_exps_patterns_assignment
    assert len(bench.test_stream) == 1 and len(bench.test_stream[0].dataset) == N_TEST
    again = ni_benchmark(train, test, 7, seed=5)
    assert again.train_exps_patterns_assignment == bench.train_exps_patterns_assignment
    assert ni_benchmark(train, test, 7, seed=6).train_exps_patterns_assignment != bench.train_exps_patterns_assignment
    plain = ni_benchmark(train, test, 3, shuffle=False)
    assert [source_rows(e.dataset).tolist() for e in plain.train_stream] == [list(range(i, i + 100))
                                                                            for i in (0, 100, 200)]


def test_ni_balance_min_patterns_task_labels_and_fixed_assignment(data10):
    train, test, ytr, _ = data10
    balanced = ni_benchmark(train, test, 4, seed=0, balance_experiences=True)
    counts = torch.stack([torch.bincount(e.dataset.targets, minlength=10) for e in balanced.train_stream])
    assert torch.all(counts.max(0).values - counts.min(0).values <= 1)
    assert torch.equal(counts.sum(0), torch.bincount(ytr, minlength=10))
    floor = ni_benchmark(train, test, 3, seed=0, min_class_patterns_in_exp=5)
    for e in floor.train_stream:
        assert torch.bincount(e.dataset.targets, minlength=10).min() >= 5
    assert sum(len(e.dataset) for e in floor.train_stream) == N_TRAIN
    with pytest.raises(ValueError, match="min_class_patterns_in_exp"):
        ni_benchmark(train, test, 3, min_class_patterns_in_exp=11)
    tasks = ni_benchmark(train, test, 3, task_labels=True, seed=0)
    assert [e.task_label for e in tasks.train_stream] == [0, 1, 2] and tasks.test_stream[0].task_label == 0
    fixed = ni_benchmark(train, test, 2, fixed_exp_assignment=[[5, 1, 9], [0, 2]])
    assert [source_rows(e.dataset).tolist() for e in fixed.train_stream] == [[5, 1, 9], [0, 2]]
    with pytest.raises(ValueError, match="more than once"):
        ni_benchmark(train, test, 2, fixed_exp_assignment=[[1, 2], [2]])
    with pytest.raises(ValueError, match="n_experiences"):
        ni_benchmark(train, test, 3, fixed_exp_assignment=[[1, 2], [3]])
    with pytest.raises(ValueError, match="n_experiences must be >= 1"):
        ni_benchmark(train, test, 0)


# ------------------------------------------------------------------------------------------------
# tensors_benchmark


def test_tensors_benchmark_one_experience_per_pair():
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (5, 7, 3)]
    tests = [(torch.randn(2, 4, generator=g), torch.tensor([0, 1])) for _ in range(3)]
    bench = tensors_benchmark(pairs, tests, task_labels=[0, 1, 2])
    assert bench.n_experiences == 3 and len(bench.test_stream) == 3
    for exp, (x, y) in zip(bench.train_stream, pairs, strict=True):
        items = [exp.dataset[i] for i in range(len(exp.dataset))]
        assert torch.equal(torch.stack([it[0] for it in items]), x)
        assert [it[1] for it in items] == y.tolist() and {it[2] for it in items} == {exp.current_experience}
    assert [e.task_label for e in bench.test_stream] == [0, 1, 2]
    whole = tensors_benchmark(pairs, tests[:1], task_labels=[0, 0, 0], complete_test_set_only=True)
    assert whole.complete_test_set_only and len(whole.test_stream) == 1
    with pytest.raises(ValueError, match="exactly one"):
        tensors_benchmark(pairs, tests, task_labels=[0, 0, 0], complete_test_set_only=True)
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        tensors_benchmark([(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long))], tests[:1], task_labels=[0])
    with pytest.raises(ValueError, match="task_labels"):
        tensors_benchmark(pairs, tests, task_labels=[0, 1])


# ------------------------------------------------------------------------------------------------
# permuted


def test_permuted_benchmark_applies_one_seeded_bijection_per_experience_to_train_and_test():
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.rand(20, 1, 4, 5, generator=g), torch.randint(0, 3, (20,), generator=g)
    xte, yte = torch.rand(8, 1, 4, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    bench = permuted_benchmark(TensorDataset(xtr, ytr), TensorDataset(xte, yte), 3, seed=11, task_labels=True)
    rng = np.random.RandomState(11)
    assert len(bench.test_stream) == 3 and bench.n_classes == 3
    for exp_id, perm in enumerate(bench.permutations):
        assert torch.equal(torch.sort(perm).values, torch.arange(20))  # a bijection
        assert torch.equal(perm, torch.from_numpy(rng.permutation(20)))  # Avalanche's draws
        for exp, x, y in ((bench.train_stream[exp_id], xtr, ytr), (bench.test_stream[exp_id], xte, yte)):
            got = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
            assert torch.equal(got, x.reshape(len(x), -1)[:, perm].reshape(x.shape))
            assert torch.equal(exp.dataset.targets, y) and exp.task_label == exp_id
            batch = exp.dataset.__getitems__(list(range(len(exp.dataset))))
            assert torch.equal(torch.stack([b[0] for b in batch]), got)
    assert len({tuple(p.tolist()) for p in bench.permutations}) == 3
    same = permuted_benchmark(TensorDataset(xtr, ytr), TensorDataset(xte, yte), 3, seed=11)
    assert all(torch.equal(a, b) for a, b in zip(same.permutations, bench.permutations, strict=True))
    other = permuted_benchmark(TensorDataset(xtr, ytr), TensorDataset(xte, yte), 3, seed=12)
    assert not torch.equal(other.permutations[0], bench.permutations[0])
    first = permuted_benchmark(TensorDataset(xtr, ytr), TensorDataset(xte, yte), 3, seed=11, first_unpermuted=True)
    assert torch.equal(first.permutations[0], torch.arange(20))
    assert torch.equal(first.permutations[2], bench.permutations[2])
    assert torch.equal(first.train_stream[0].dataset[3][0], xtr[3])
    with pytest.raises(ValueError):
        PixelsPermutation([0, 0, 1])


# ------------------------------------------------------------------------------------------------
# datasets, streams, loaders


def test_dataloader_over_an_experience_yields_x_y_t(data10):
    train, test, ytr, _ = data10
    bench = nc_benchmark(train, test, 5, task_labels=True, seed=0)
    exp = bench.train_stream[2]
    loader = DataLoader(exp.dataset, batch_size=16, shuffle=False, collate_fn=exp.dataset.collate_fn)
    batches = list(loader)
    assert all(isinstance(b, list) and len(b) == 3 for b in batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    t = torch.cat([b[2] for b in batches])
    assert x.shape == (len(exp.dataset), 3) and y.dtype == torch.long and t.dtype == torch.long
    assert torch.equal(y, ytr[x[:, 0].long()]) and torch.all(t == 2)


def test_classification_dataset_views_transforms_and_errors():
    class Pairs(Dataset):
        def __init__(self):
            self.calls = 0

        def __len__(self):
            return 6

        def __getitem__(self, i):
            self.calls += 1
            return torch.full((2,), float(i)), i % 3

    pairs = Pairs()
    ds = ClassificationDataset.from_dataset(pairs)  # no .targets: read by one pass
    assert ds.targets.tolist() == [0, 1, 2, 0, 1, 2] and pairs.calls == 6
    sub = ds.subset([5, 1, 3]).subset([2, 0])
    assert [sub[i][0][0].item() for i in range(2)] == [3.0, 5.0] and sub.targets.tolist() == [0, 2]
    both = sub + ds.subset([4])
    assert [both[i][0][0].item() for i in range(3)] == [3.0, 5.0, 4.0] and both.targets.tolist() == [0, 2, 1]
    tensor_ds = ClassificationDataset(torch.arange(5.0).unsqueeze(1), [1, 1, 0, 0, 1],
                                      train_transform=lambda x: x + 100, eval_transform=lambda x: -x)
    assert tensor_ds[2][0].item() == 102 and tensor_ds.eval()[2][0].item() == -2
    joined = concat_datasets([tensor_ds.subset([4]), tensor_ds.subset([0, 1])])
    assert joined._source is tensor_ds._source and joined.targets.tolist() == [1, 1, 1]
    assert ClassificationDataset.from_dataset(type("T", (), {"targets": [0, 1], "__len__": lambda s: 2,
                                                              "__getitem__": lambda s, i: (i, 0)})()).targets.tolist() \
        == [0, 1]
    remapped = tensor_ds.remap_targets([5, 7])
    assert remapped.targets.tolist() == [7, 7, 5, 5, 7] and tensor_ds.targets.tolist() == [1, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="-1"):
        tensor_ds.remap_targets([-1, 3])
    with pytest.raises(ValueError, match="5 entries, expected 4"):
        ClassificationDataset(torch.zeros(4, 2), [0, 1, 0, 1, 0])
    with pytest.raises(IndexError):
        tensor_ds[5]
    with pytest.raises(IndexError):
        tensor_ds.subset([7])
    with pytest.raises(TypeError):
        ClassificationDataset(torch.zeros(2, 1), [0, 1], transform=3)
    with pytest.raises(ValueError, match="task_labels"):
        ClassificationDataset(torch.zeros(2, 1), [0, 1], [0])


def test_stream_indexing_slicing_iteration(data10):
    train, test, _, _ = data10
    bench = nc_benchmark(train, test, 5, False, seed=0)
    stream = bench.train_stream
    assert stream.name == "train" and bench.test_stream.name == "test" and len(stream) == 5
    assert [e.current_experience for e in stream] == list(range(5))
    assert stream[-1] is stream[4] and stream[1].origin_stream is stream and stream[1].benchmark is bench
    part = stream[1:4]
    assert len(part) == 3 and [e.current_experience for e in part] == [1, 2, 3] and part.name == "train"
    assert [e.current_experience for e in part[::2]] == [1, 3] and part[0] is stream[1]
    assert [e.current_experience for e in stream[[4, 0]]] == [4, 0]
    with pytest.raises(IndexError):
        stream[5]
    with pytest.raises(TypeError):
        stream["a"]


def test_benchmark_transforms_follow_train_and_eval_mode(data10):
    train, test, _, _ = data10
    bench = nc_benchmark(train, test, 5, False, seed=0, train_transform=lambda x: x * 0 + 1,
                         eval_transform=lambda x: x * 0 - 1)
    tr, te = bench.train_stream[0].dataset, bench.test_stream[0].dataset
    assert tr[0][0].tolist() == [1, 1, 1] and tr.eval()[0][0].tolist() == [-1, -1, -1]
    assert te[0][0].tolist() == [-1, -1, -1] and te.train()[0][0].tolist() == [1, 1, 1]


# ------------------------------------------------------------------------------------------------
# Split-Digits


def test_split_digits_shapes_classes_and_sizes():
    from sklearn.datasets import load_digits

    digits = load_digits()
    bench = split_digits(5, seed=0)
    train_total = sum(len(e.dataset) for e in bench.train_stream)
    test_total = sum(len(e.dataset) for e in bench.test_stream)
    assert train_total + test_total == 1797 and bench.n_classes == 10
    assert sorted(c for e in bench.train_stream for c in e.classes_in_this_experience) == list(range(10))
    x, y, t = bench.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int) and t == 0
    train, test = digits_datasets()
    counts = np.bincount(digits.target)
    assert np.array_equal(np.bincount(test.targets.numpy()), np.round(0.2 * counts).astype(int))  # stratified
    rows = train._indices
    assert torch.equal(train._source[rows], torch.from_numpy(digits.images[rows.numpy()] / 16.0).float().unsqueeze(1))
    assert float(train._source.min()) == 0.0 and float(train._source.max()) == 1.0
    assert torch.equal(digits_datasets()[1]._indices, test._indices)  # the split is fixed
    assert not set(train._indices.tolist()) & set(test._indices.tolist())
    ti = split_digits(2, return_task_id=True, fixed_class_order=list(range(10)))
    assert [e.classes_in_this_experience for e in ti.train_stream] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [e.task_label for e in ti.test_stream] == [0, 1]


def test_scenario_registry_builds_split_digits_by_name():
    assert set(SCENARIOS) == {"split-digits", "split-mnist", "permuted-mnist"}
    bench = SCENARIOS["split-digits"](n_experiences=2, seed=3)
    assert bench.n_experiences == 2 and bench.classes_order == split_digits(2, seed=3).classes_order


def test_split_digits_options_are_nc_benchmarks_and_no_others():
    bench = split_digits(5, seed=2, shuffle=False, class_ids_from_zero_in_each_exp=True)
    assert bench.classes_order_original_ids == list(range(10)) and bench.classes_order == [0, 1] * 5
    with pytest.raises(TypeError, match="per_exp_classes"):
        split_digits(4, per_exp_classes={0: 4})
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="test_fraction"):
            digits_datasets(test_fraction=bad)
    with pytest.raises(TypeError, match="test_fraction"):
        digits_datasets(test_fraction="0.2")


def test_builders_take_numpy_integers_for_counts_seeds_and_classes(data10):
    train, test, _, _ = data10
    bench = nc_benchmark(train, test, np.int64(5), False, seed=np.int64(3), fixed_class_order=np.arange(10)[::-1])
    assert bench.n_experiences == 5 and bench.classes_order == list(range(9, -1, -1))
    assert ni_benchmark(train, test, np.int32(3), seed=np.int64(0)).n_experiences == 3
    with pytest.raises(TypeError, match="seed must be an int"):
        ni_benchmark(train, test, 3, seed=1.5)
