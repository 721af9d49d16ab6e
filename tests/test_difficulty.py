"""Difficulty labels, the SFT/RL split, the summary table, and DAPO's group filter."""

import pytest
import torch

from longvid.data.reason.filter import label_difficulty, split_by_difficulty, summary_table
from longvid.rl.difficulty import filter_groups, keep_group


def test_labels_from_lists():
    correct = [
        [True] * 10,  # always right
        [False] * 10,  # always wrong
        [True] + [False] * 9,  # mixed
        [False] * 9 + [True],
    ]
    assert label_difficulty(correct) == ["easy", "hard", "medium", "medium"]


def test_labels_from_tensor_and_ints():
    correct = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    assert label_difficulty(correct) == ["easy", "hard", "medium"]
    assert label_difficulty(torch.tensor([[1.0, 0.0]])) == ["medium"]
    assert label_difficulty([[1, 1]]) == ["easy"]
    assert label_difficulty([]) == []


def test_rows_may_differ_in_length():
    assert label_difficulty([[True], [True, False, True]]) == ["easy", "medium"]


@pytest.mark.parametrize(
    "correct, match",
    [
        ([[True], []], "question 1 has no answers"),
        ([[0.5, 1.0]], "question 0: correctness"),
        (torch.ones(3), r"\[Q, N\]"),
    ],
)
def test_label_errors(correct, match):
    with pytest.raises(ValueError, match=match):
        label_difficulty(correct)


def test_split_sends_easy_and_hard_to_sft_and_medium_to_rl():
    samples = ["q0", "q1", "q2", "q3", "q4"]
    labels = ["easy", "medium", "hard", "medium", "easy"]
    assert split_by_difficulty(samples, labels) == {"sft": ["q0", "q2", "q4"], "rl": ["q1", "q3"]}


def test_split_errors():
    with pytest.raises(ValueError, match="2 samples but 1 labels"):
        split_by_difficulty(["a", "b"], ["easy"])
    with pytest.raises(ValueError, match="label 1 is 'trivial'"):
        split_by_difficulty(["a", "b"], ["easy", "trivial"])


def test_summary_table():
    labels = ["easy", "medium", "medium", "hard", "easy", "hard", "medium"]
    categories = ["plot", "goal", "goal", "temporal", "custom", "goal", "temporal"]
    expected = "\n".join(
        [
            "| category | easy | medium | hard | total |",
            "| --- | ---: | ---: | ---: | ---: |",
            "| temporal | 0 | 1 | 1 | 2 |",
            "| goal | 0 | 2 | 1 | 3 |",
            "| plot | 1 | 0 | 0 | 1 |",
            "| custom | 1 | 0 | 0 | 1 |",
            "| all | 2 | 3 | 2 | 7 |",
        ]
    )
    assert summary_table(labels, categories) == expected


def test_summary_table_errors():
    with pytest.raises(ValueError, match="2 labels but 1 categories"):
        summary_table(["easy", "hard"], ["plot"])
    with pytest.raises(ValueError, match="label 0 is 'simple'"):
        summary_table(["simple"], ["plot"])


@pytest.mark.parametrize(
    "mean, kept",
    [
        (0.0, False), (0.01, False), (0.02, True), (0.5, True),
        (0.98, True), (0.99, False), (1.0, False), (float("nan"), False),
    ],
)
def test_keep_group_is_strictly_inside(mean, kept):
    assert keep_group(mean) is kept


def test_keep_group_custom_bounds():
    assert keep_group(0.2, low=0.25) is False
    assert keep_group(0.9, high=0.8) is False


def test_filter_groups():
    rewards = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],  # all right: no gradient
            [0.0, 0.0, 0.0, 0.0],  # all wrong: no gradient
            [1.0, 0.0, 0.0, 0.0],  # mean 0.25
            [0.1, 0.0, 0.1, 0.0],  # all wrong but format varies: mean 0.05, kept
        ]
    )
    assert filter_groups(rewards).tolist() == [False, False, True, True]
    assert filter_groups(rewards.reshape(-1), group_size=4).tolist() == [False, False, True, True]
    assert filter_groups(rewards, low=0.1).tolist() == [False, False, True, False]


def test_filter_groups_errors():
    with pytest.raises(ValueError, match="group_size"):
        filter_groups(torch.ones(6))
    with pytest.raises(ValueError, match="group_size"):
        filter_groups(torch.ones(6), group_size=4)
    with pytest.raises(ValueError, match="shape"):
        filter_groups(torch.ones(2, 2, 2))
