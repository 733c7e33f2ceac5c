import pytest
import torch

from backdoor_bench.metrics import attack_metrics, detection_metrics


def test_all2one_metrics_by_hand():
    y = torch.tensor([0, 1, 2, 3, 0])  # target 0: images 1, 2, 3 enter ASR
    clean = torch.tensor([0, 1, 0, 3, 1])  # correct: 0, 1, 3 -> acc 3/5; non-target correct 1, 3 -> 2/3
    trig = torch.tensor([0, 0, 2, 0, 0])  # on images 1,2,3: target, true label, target
    m = attack_metrics(clean, trig, y, torch.zeros_like(y), y != 0)
    assert m == {"acc": 0.6, "acc_nontarget": 2 / 3, "asr": 2 / 3, "ra": 1 / 3}


def test_all2all_metrics_by_hand():
    y = torch.tensor([0, 1, 2, 3])
    target = (y + 1) % 4
    trig = torch.tensor([1, 2, 2, 1])  # hits: 0, 1; image 2 keeps its label
    m = attack_metrics(y.clone(), trig, y, target, torch.ones(4, dtype=torch.bool))
    assert m == {"acc": 1.0, "acc_nontarget": 1.0, "asr": 0.5, "ra": 0.25}


def test_empty_asr_set_gives_none():
    y = torch.zeros(3, dtype=torch.long)
    m = attack_metrics(y, y, y, y, torch.zeros(3, dtype=torch.bool))
    assert m["asr"] is None and m["acc"] == 1.0


def test_detection_metrics_by_hand():
    poisoned = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    y_true = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    given = torch.tensor([0, 0, 0, 4, 5, 6, 7, 8])
    kept = torch.tensor([0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)  # removes 0 (tp) and 3 (fp)
    labels = given.clone()
    labels[1] = 2  # relabeled poisoned, correct
    labels[5] = 9  # relabeled clean: a false positive
    d = detection_metrics(kept, labels, given, poisoned, y_true)
    assert d["tp"] == 2 and d["fp"] == 2 and d["fn"] == 1
    assert d["tpr"] == 2 / 3 and d["fpr"] == 2 / 5 and d["precision"] == 0.5
    assert d["n_flagged"] == 4 and d["n_removed"] == 2 and d["n_relabeled"] == 2
    assert d["relabel_acc"] == 1.0


def test_detection_without_relabels_or_poison():
    kept = torch.tensor([1, 0], dtype=torch.bool)
    d = detection_metrics(kept, None, torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool), torch.tensor([0, 1]))
    assert d["tpr"] is None and d["fpr"] == 0.5 and d["precision"] == 0.0 and d["relabel_acc"] is None


def test_trusted_purity_of_a_clean_split():
    kept = torch.tensor([True, True, True, False])
    poisoned = torch.tensor([False, True, False, True])
    trusted = torch.tensor([True, True, True, False])
    d = detection_metrics(
        kept, None, torch.zeros(4, dtype=torch.long), poisoned, torch.zeros(4, dtype=torch.long), trusted
    )
    assert d["trusted_purity"] == pytest.approx(2 / 3) and d["n_trusted"] == 3 and d["precision"] == 1.0
    assert "trusted_purity" not in detection_metrics(
        kept, None, torch.zeros(4, dtype=torch.long), poisoned, torch.zeros(4, dtype=torch.long)
    )
