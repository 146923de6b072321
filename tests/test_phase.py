import json
import math
import random

import pytest

from utils.phase import PeakDetector, describe_peak, offline_peak


def feed(detector, values, steps=None):
    steps = steps or list(range(0, 10 * len(values), 10))
    declared_at, moves = None, []
    for step, value in zip(steps, values):
        event = detector.update(step, value)
        if event["moved_to"] is not None:
            moves.append(event["moved_to"])
        if event["declared"]:
            declared_at = step
    return declared_at, moves


def rise_fall(n=60, peak=20, noise=0.0, seed=0):
    rng = random.Random(seed)
    return [100 - 0.1 * (i - peak) ** 2 * (1 if i < peak else 0.3) + rng.gauss(0, noise) for i in range(n)]


def test_noisy_rise_and_fall_is_declared_near_the_true_peak():
    for seed in range(5):
        det = PeakDetector(patience=3, margin=0.01)
        declared_at, _ = feed(det, rise_fall(noise=0.3, seed=seed))
        assert det.declared and det.phase == 2
        assert abs(det.peak_step - 200) <= 30  # the true peak is at step 200
        assert declared_at > det.peak_step


def test_monotone_rise_and_flat_series_never_declare():
    for values in ([float(i) for i in range(50)], [5.0] * 50, [5.0 + 0.01 * (-1) ** i for i in range(50)]):
        det = PeakDetector()
        assert feed(det, values)[0] is None and det.phase == 1


def test_a_one_evaluation_spike_or_dip_is_ignored():
    values = [float(i) for i in range(40)]
    values[10] = 500.0  # spike during the rise
    values[20] = 0.0  # dip during the rise
    det = PeakDetector(patience=2, margin=0.01)
    assert feed(det, values)[0] is None
    assert det.peak_step == 380  # the running peak follows the real rise, not the spike


def test_without_smoothing_a_spike_would_be_declared():
    values = [10.0] * 5 + [50.0] + [10.0] * 10
    det = PeakDetector(patience=3, margin=0.01, window=1)
    assert feed(det, values)[0] == 80 and det.peak_step == 50


def test_state_dict_round_trip_resumes_identically():
    values = rise_fall(noise=0.3, seed=3)
    whole = PeakDetector()
    expected = feed(whole, values)
    first = PeakDetector()
    feed(first, values[:25])
    second = PeakDetector()
    second.load_state_dict(first.state_dict())
    declared_at, _ = feed(second, values[25:], steps=list(range(250, 600, 10)))
    assert declared_at == expected[0] and second.peak_step == whole.peak_step


def test_bad_settings_and_non_finite_values():
    with pytest.raises(ValueError):
        PeakDetector(window=2)
    det = PeakDetector()
    assert det.update(0, math.nan) == {"moved_to": None, "declared": False}


@pytest.mark.parametrize("values, where, index", [
    ([1, 3, 3, 2], "interior", 1), ([5, 3, 2], "start", 0), ([1, 2, 4], "end", 2), ([None, math.nan], None, None),
])
def test_offline_peak(values, where, index):
    peak = offline_peak([0, 10, 20, 30][: len(values)], values)
    assert peak["where"] == where and peak["index"] == index
    assert isinstance(describe_peak(peak, "effective_rank"), str)


def test_peak_checkpoint_exports_the_weights_of_the_peak_evaluation(tmp_path, tiny_bert):
    import torch
    from safetensors.torch import load_file

    from utils.model import SimCSEModel, load_pretrained
    from utils.run_folder import PeakCheckpoint

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls")
    keeper = PeakCheckpoint(str(tmp_path), keep=2)
    weights = {}
    for step in (0, 10, 20):
        with torch.no_grad():
            model.encoder.embeddings.word_embeddings.weight.fill_(step)  # each evaluation's weights differ
        weights[step] = model.encoder.embeddings.word_embeddings.weight.clone()
        keeper.remember(step, model)
    assert sorted(keeper.snapshots) == [10, 20]
    # the detector learns at step 20 that step 10 was the running peak ...
    keeper.on_event({"moved_to": 10, "declared": False}, model, tokenizer, 62)
    assert (tmp_path / "peak.candidate").is_dir() and not (tmp_path / "peak").exists()
    keeper.on_event({"moved_to": None, "declared": True}, model, tokenizer, 62)
    saved = load_file(str(tmp_path / "peak" / "model.safetensors"))
    assert torch.equal(saved["embeddings.word_embeddings.weight"], weights[10])
    assert json.load(open(tmp_path / "peak" / "peak_step.json")) == {"step": 10}
    assert model.encoder.embeddings.word_embeddings.weight[0, 0] == 20  # the live model is untouched
    keeper.on_event({"moved_to": 0, "declared": False}, model, tokenizer, 62)  # no longer kept
    assert "step 0" in keeper.note
