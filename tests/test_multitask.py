"""MultiTaskModule, MultiHeadClassifier and MultiHeadMLP: routing by task label against per-sample and per-head
references, head creation and widening in ``adaptation``, state-dict loading, and training end to end with
``Naive`` on the task-incremental Split-Digits (heads per task, earlier heads untouched, routing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clfast.nn import DEFAULT_PAD_VALUE, MultiHeadClassifier, MultiHeadMLP, MultiTaskModule
from clfast.scenarios import three_scenarios_split_digits
from clfast.strategies import Naive
from clfast.testing.fakes import Experience, Stream, TensorExperienceDataset
from clfast.training.utils import is_task_aware


def _experience(task_labels: list[int], targets: list[int]) -> Experience:
    """A fake experience whose samples have these task labels and targets (one label for ``task_labels``)."""
    y, t = torch.tensor(targets), torch.tensor(task_labels * (len(targets) // len(task_labels)))
    exp = Experience(TensorExperienceDataset(torch.zeros(len(targets), 3), y, t), 0, Stream("train"))
    exp.task_labels = sorted(set(t.tolist()))
    return exp


def _classifier(widths: dict[int, int], in_features: int = 5, **kwargs) -> MultiHeadClassifier:
    """A MultiHeadClassifier adapted to one experience per task, task ``t``'s classes being ``0..widths[t]-1``."""
    torch.manual_seed(0)
    model = MultiHeadClassifier(in_features, **kwargs)
    for task, width in widths.items():
        model.adaptation(_experience([task], list(range(width))))
    return model


class _Recorder(MultiTaskModule):
    """forward_single_task(x, t) = x * (t + 1), recording each call's input and label."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, int]] = []

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        self.calls.append((x, task_label))
        return x * (task_label + 1)


def test_the_templates_see_these_models_as_task_aware():
    assert is_task_aware(MultiHeadClassifier(4)) and is_task_aware(MultiHeadMLP(4, 8, 1)) and is_task_aware(_Recorder())
    assert not is_task_aware(nn.Linear(4, 2))


def test_mixed_batch_routes_each_sample_to_its_head_in_input_order():
    model = _classifier({0: 2, 1: 3, 2: 2})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(11, 5, generator=g)
    t = torch.tensor([2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1])
    out = model(x, t)
    assert out.shape == (11, 3)
    for i in range(11):  # the reference: each sample alone through its own head, padded by hand
        head = model.classifiers[str(int(t[i]))]
        expected = torch.full((3,), DEFAULT_PAD_VALUE)
        expected[: head.out_features] = x[i] @ head.weight.T + head.bias
        torch.testing.assert_close(out[i], expected)
    zero_padded = _classifier({0: 2, 1: 3, 2: 2}, pad_value=0.0)(x, t)  # Avalanche's padding
    assert torch.equal(zero_padded[t != 1, 2], torch.zeros(7)) and torch.equal(zero_padded[t == 1], out[t == 1])


def test_a_single_task_batch_takes_the_fast_path_unpadded():
    model = _Recorder()
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(model(x, torch.tensor([4, 4, 4])), x * 5) and model.calls[-1][0] is x  # no gather
    assert torch.equal(model(x, 2), x * 3) and model.calls[-1] == (x, 2)
    clf = _classifier({0: 2, 1: 3})
    assert clf(torch.randn(4, 5), torch.zeros(4, dtype=torch.long)).shape == (4, 2)  # the head's own width


def test_mixed_outputs_of_equal_shape_are_not_padded_and_keep_order():
    model = _Recorder()
    x = torch.arange(10.0).reshape(5, 2)
    t = torch.tensor([1, 0, 1, 3, 0])
    assert torch.equal(model(x, t), x * (t + 1).unsqueeze(1))
    assert [label for _, label in model.calls] == [0, 1, 3]  # one call per task, in sorted order


def test_padding_keeps_each_samples_prediction_and_cross_entropy():
    model = _classifier({0: 2, 1: 5})
    with torch.no_grad():  # task 0's logits are all negative: a zero-padded column would win the argmax
        model.classifiers["0"].weight.zero_()
        model.classifiers["0"].bias.copy_(torch.tensor([-3.0, -4.0]))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 0, 1, 1, 0])
    y = torch.tensor([1, 4, 0, 2, 3, 0])
    mixed = model(x, t)
    alone = [model(x[i:i + 1], t[i:i + 1]) for i in range(6)]
    assert mixed.argmax(1).tolist() == [int(o.argmax()) for o in alone]
    ce = nn.functional.cross_entropy(mixed, y, reduction="none")
    torch.testing.assert_close(ce, torch.stack([nn.functional.cross_entropy(o, y[i:i + 1])
                                                for i, o in enumerate(alone)]))
    zero_padded = _classifier({0: 2, 1: 5}, pad_value=0.0)
    zero_padded.load_state_dict(model.state_dict())
    assert zero_padded(x, t)[t == 0].argmax(1).min() >= 2  # why the default is not Avalanche's zeros


def test_unknown_task_labels_and_malformed_labels_are_clear_errors():
    model = _classifier({0: 2, 1: 2})
    with pytest.raises(ValueError, match=r"no head for task label 7 \(heads: \[0, 1\]\)"):
        model(torch.randn(3, 5), torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="no head for task label 3"):
        model(torch.randn(3, 5), 3)
    with pytest.raises(TypeError, match="integers"):
        model(torch.randn(2, 5), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one label per sample"):
        model(torch.randn(2, 5), torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="task_labels"):
        model(torch.randn(2, 5), [0, 1])
    with pytest.raises(ValueError, match="pad_value"):
        MultiHeadClassifier(5, pad_value=float("-inf"))


def test_adaptation_creates_heads_per_task_and_widens_them_keeping_rows():
    torch.manual_seed(0)
    model = MultiHeadClassifier(3, initial_out_features=2)
    assert list(model.classifiers) == ["0"]  # head 0 from construction, as in Avalanche
    head0 = model.classifiers["0"]
    model.adaptation(_experience([1], [0, 1, 1]))
    assert model.classifiers["0"] is head0 and model.classifiers["1"].out_features == 2
    old = model.classifiers["1"]
    model.adaptation(_experience([1], [0, 3]))
    new = model.classifiers["1"]
    assert new.out_features == 4 and torch.equal(new.weight[:2], old.weight) and torch.equal(new.bias[:2], old.bias)
    model.adaptation(_experience([2, 3], [0, 4, 1, 1]))  # per task: task 2 has classes {0, 1}, task 3 {4, 1}
    assert model.classifiers["2"].out_features == 2 and model.classifiers["3"].out_features == 5
    assert model.known_train_tasks_labels == {1, 2, 3}
    model.eval()
    model.adaptation(_experience([6], [0, 1]))  # evaluation creates the head but does not "know" the task
    assert "6" in model.classifiers and 6 not in model.known_train_tasks_labels
    assert set(model.forward_all_tasks(torch.randn(2, 3))) == {1, 2, 3}


def test_gradients_reach_only_the_heads_of_the_batch_tasks():
    model = MultiHeadMLP(5, 6, 1)
    for task in (1, 2):
        model.adaptation(_experience([task], [0, 1]))
    model(torch.randn(4, 5), torch.tensor([0, 2, 2, 0])).sum().backward()
    grads = {k: h.weight.grad for k, h in model.classifier.classifiers.items()}
    assert grads["1"] is None and grads["0"].abs().sum() > 0 and grads["2"].abs().sum() > 0


def test_a_fresh_model_loads_the_heads_of_a_trained_one():
    torch.manual_seed(0)
    trained = MultiHeadMLP(5, 6, 1)
    trained.adaptation(_experience([1], [0, 1, 2]))
    trained.adaptation(_experience([3], [0, 1]))
    torch.manual_seed(1)
    fresh = MultiHeadMLP(5, 6, 1)
    fresh.adaptation(_experience([3], [0]))  # a head of another width, then resized by loading
    fresh.load_state_dict(trained.state_dict())  # strict
    assert sorted(fresh.classifier.classifiers) == ["0", "1", "3"]
    x, t = torch.randn(6, 5), torch.tensor([3, 1, 0, 1, 3, 0])
    assert torch.equal(fresh(x, t), trained(x, t))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_naive_trains_a_head_per_task_and_leaves_earlier_heads_alone():
    bench = three_scenarios_split_digits("task")
    torch.manual_seed(0)
    model = MultiHeadMLP(64, 32, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = Naive(model, optimizer, train_mb_size=32, train_epochs=2, eval_mb_size=256, evaluator=None)
    heads = model.classifier.classifiers
    trained: dict[str, dict[str, torch.Tensor]] = {}
    for exp in bench.train_stream:
        k = str(exp.current_experience)
        body = _snapshot(model.features)
        before = _snapshot(heads[k]) if k in heads else None  # head 0 exists; eval made heads 1-4
        strategy.train(exp)
        assert sorted(heads, key=int)[: int(k) + 1] == [str(i) for i in range(int(k) + 1)]
        assert not _same(_snapshot(model.features), body) and not _same(_snapshot(heads[k]), before)
        for j, snap in trained.items():  # only the body and the current head trained
            assert _same(_snapshot(heads[j]), snap), f"head {j} changed while training task {k}"
        trained[k] = _snapshot(heads[k])
        if k == "0":
            strategy.eval(bench.test_stream)  # creates the heads of tasks 1-4 (untrained), as in Avalanche
            assert sorted(heads, key=int) == ["0", "1", "2", "3", "4"] and all(h.training for h in heads.values())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in model.parameters())
    # routing on a batch mixing all five test experiences, against each head called directly on the body
    xs, ts = [], []
    for exp in bench.test_stream:
        x, _, t = zip(*exp.dataset.__getitems__(list(range(8))), strict=True)
        xs.append(torch.stack(x))
        ts.append(torch.tensor(t))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    x, t = torch.cat(xs)[perm], torch.cat(ts)[perm]
    with torch.no_grad():
        out, z = model(x, t), model.features(x)
        for task in range(5):
            torch.testing.assert_close(out[t == task], heads[str(task)](z[t == task]))
    accuracy = _task_il_accuracy(model, bench)
    assert accuracy > 0.9, accuracy  # two digits per task after two epochs: far above chance (0.5)


def _task_il_accuracy(model: nn.Module, bench) -> float:
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for exp in bench.test_stream:
            items = exp.dataset.__getitems__(list(range(len(exp.dataset))))
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([item[1] for item in items])
            hits += int((model(x, exp.task_label).argmax(1) == y).sum())
            total += len(y)
    return hits / total
