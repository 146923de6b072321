"""RRSchedule: the weight of Rank Reduction per step, for each schedule, and its resumable state."""

import math

import pytest

from utils.rr_schedule import RRSchedule


def weights(schedule, steps, active=lambda step: True):
    return [schedule.weight(step, active(step)) for step in range(steps)]


def test_constant_is_the_weight_at_every_step_and_zero_when_off():
    assert weights(RRSchedule(0.1, "constant", 5), 5) == [0.1] * 5
    assert weights(RRSchedule(0.0, "linear", 5), 5) == [0.0] * 5
    assert weights(RRSchedule(0.1, "constant", 5), 5, active=lambda s: s >= 2) == [0, 0, 0.1, 0.1, 0.1]


def test_linear_and_cosine_decay_to_zero_over_the_run_from_rr_start():
    assert weights(RRSchedule(1.0, "linear", 4), 4) == [1.0, 0.75, 0.5, 0.25]
    cos = weights(RRSchedule(1.0, "cosine", 4), 4)
    assert cos == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    # --rr_start peak: the decay counts from the first active step, over the steps that are left
    assert weights(RRSchedule(1.0, "linear", 6), 6, active=lambda s: s >= 2) == [0, 0, 1.0, 0.75, 0.5, 0.25]
    # decay_steps: 0 from then on
    assert weights(RRSchedule(1.0, "linear", 6, decay_steps=2), 6) == [1.0, 0.5, 0, 0, 0, 0]
    assert weights(RRSchedule(1.0, "cosine", 6, decay_steps=2), 6) == pytest.approx([1.0, 0.5, 0, 0, 0, 0])


def test_plateau_holds_the_weight_until_stsb_dev_stalls_for_patience_evaluations():
    s = RRSchedule(0.2, "plateau", 100, patience=2)
    assert not s.on_eval(0, 70.0)  # before RR has started: not counted
    assert s.weight(0) == 0.2
    assert [s.on_eval(step, score) for step, score in [(10, 75.0), (20, 74.0), (30, 76.0), (40, 75.9)]] \
        == [False, False, False, False]  # a new best at 30 resets the count
    assert s.weight(41) == 0.2
    assert s.on_eval(50, float("nan"))  # second evaluation without a new best: off from step 50
    assert s.weight(50) == 0.0 and s.weight(99) == 0.0
    assert not s.on_eval(60, 99.0)  # once off, it stays off


def test_plateau_with_decay_steps_decays_linearly_after_the_stall():
    s = RRSchedule(1.0, "plateau", 100, decay_steps=4, patience=1)
    s.weight(0)
    s.on_eval(10, 80.0)
    assert s.on_eval(20, 79.0)
    assert [s.weight(step) for step in range(20, 26)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_state_dict_resumes_the_same_sequence():
    def drive(schedule, steps):
        out = []
        for step in steps:
            out.append(schedule.weight(step, active=step >= 3))
            if step % 5 == 4:
                schedule.on_eval(step + 1, [80, 81, 80.5, 80.2, 82, 81][(step // 5) % 6])
        return out

    full = drive(RRSchedule(0.5, "plateau", 40, decay_steps=7, patience=2), range(40))
    first = RRSchedule(0.5, "plateau", 40, decay_steps=7, patience=2)
    head = drive(first, range(17))
    resumed = RRSchedule(0.5, "plateau", 40, decay_steps=7, patience=2)
    resumed.load_state_dict(first.state_dict())
    assert head + drive(resumed, range(17, 40)) == full
    assert 0 in full[20:] and max(full) == 0.5  # the plateau was reached and the decay ran


@pytest.mark.parametrize("kind", ["plateau", "target"])
def test_anneal_lr_decays_the_learning_rate_linearly_from_the_stall(kind):
    s = RRSchedule(1.0, kind, 100, decay_steps=4, patience=1, anneal_lr=True)
    plain = RRSchedule(1.0, kind, 100, decay_steps=4, patience=1)
    for schedule in (s, plain):
        schedule.weight(0)
        schedule.on_eval(10, 80.0)
    assert [s.lr_factor(step) for step in (0, 10, 19)] == [1.0, 1.0, 1.0]  # before the stall: the LR schedule's own
    assert s.on_eval(20, 79.0) and plain.on_eval(20, 79.0)
    assert [s.lr_factor(step) for step in range(20, 26)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert {plain.lr_factor(step) for step in range(0, 30)} == {1.0}  # without anneal_lr the LR is never touched
    resumed = RRSchedule(1.0, kind, 100, decay_steps=4, patience=1, anneal_lr=True)
    resumed.load_state_dict(s.state_dict())
    assert [resumed.lr_factor(step) for step in range(20, 26)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_anneal_lr_with_no_decay_steps_stops_the_updates_at_the_stall():
    s = RRSchedule(1.0, "plateau", 100, patience=1, anneal_lr=True)
    s.weight(0)
    s.on_eval(5, 80.0)
    assert s.on_eval(10, 80.0)  # equal is not better
    assert s.lr_factor(10) == 0.0 and s.lr_factor(11) == 0.0


@pytest.mark.parametrize("kwargs", [dict(kind="step"), dict(weight=-1.0), dict(patience=0), dict(decay_steps=-1),
                                    dict(anneal_lr=True), dict(kind="linear", anneal_lr=True)])
def test_bad_arguments_are_refused(kwargs):
    args = dict(weight=0.1, kind="constant", total_steps=10) | kwargs
    with pytest.raises(ValueError):
        RRSchedule(**args)


def test_target_holds_the_weight_until_the_stall_then_steers_the_vne_back_to_the_best_evaluations():
    s = RRSchedule(0.1, "target", 100, patience=1, gain=0.5)
    assert s.reads_vne and not RRSchedule(0.1, "plateau", 100).reads_vne and not RRSchedule(0.0, "target").reads_vne
    assert s.weight(0) == 0.1
    s.observe(3.0)
    assert s.vne_ema == 3.0
    assert not s.on_eval(1, 80.0)  # the best: its VNE (moving average) is the target
    assert s.target == 3.0
    for vne in (2.0, 2.0):  # the rank falls under RR, but the controller is not on yet
        s.observe(vne)
        assert s.weight(2) == 0.1
    ema = s.vne_ema
    assert ema == pytest.approx(0.9 * (0.9 * 3 + 0.1 * 2) + 0.1 * 2)
    assert s.on_eval(3, 79.0)  # the stall: the controller takes over from λ = 0.1
    s.observe(2.0)
    ema = 0.9 * ema + 0.1 * 2.0
    assert s.weight(4) == pytest.approx(0.1 + 0.5 * 0.1 * (ema - 3.0))  # VNE below target: λ lowered
    for _ in range(100):  # far below for long: λ stops at 0, never below
        s.observe(1.0)
    assert s.weight(5) == 0.0
    for _ in range(200):  # far above: at most 2 λ0
        s.observe(5.0)
    assert s.weight(6) == pytest.approx(0.2)


def test_target_state_resumes_the_same_sequence():
    def drive(schedule, steps):
        out = []
        for step in steps:
            out.append(schedule.weight(step))
            schedule.observe(3.0 - 0.01 * step + 0.05 * (step % 3))
            if step % 5 == 4:
                schedule.on_eval(step + 1, [80, 81, 80.5, 80.2, 80.1, 81][(step // 5) % 6])
        return out

    full = drive(RRSchedule(0.5, "target", 40, patience=2), range(40))
    first = RRSchedule(0.5, "target", 40, patience=2)
    head = drive(first, range(17))
    resumed = RRSchedule(0.5, "target", 40, patience=2)
    resumed.load_state_dict(first.state_dict())
    assert head + drive(resumed, range(17, 40)) == full
    assert len(set(full[20:])) > 5  # the controller moved λ
