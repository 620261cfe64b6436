import pytest

from gateway.admission import AdmissionController, AdmissionSettings, Verdict


def test_per_backend_limit() -> None:
    admission = AdmissionController(AdmissionSettings(max_requests_per_backend=3))
    assert [admission.has_room(n) for n in range(5)] == [True, True, True, False, False]


def test_admit_queue_then_shed() -> None:
    admission = AdmissionController(AdmissionSettings(max_pending=2))
    assert admission.arrive(any_room=True) is Verdict.ADMIT
    assert admission.arrive(any_room=False) is Verdict.QUEUE
    assert admission.arrive(any_room=False) is Verdict.QUEUE
    assert admission.pending == 2
    assert admission.arrive(any_room=False) is Verdict.SHED
    assert (admission.pending, admission.shed_total) == (2, 1)
    admission.leave_queue()
    assert admission.arrive(any_room=False) is Verdict.QUEUE


def test_timeouts_count_as_shed() -> None:
    admission = AdmissionController(AdmissionSettings(max_pending=1))
    assert admission.arrive(any_room=False) is Verdict.QUEUE
    admission.leave_queue()
    admission.timed_out()
    assert (admission.pending, admission.shed_total) == (0, 1)


def test_newcomers_do_not_overtake_the_queue() -> None:
    admission = AdmissionController(AdmissionSettings(max_pending=4))
    assert admission.arrive(any_room=False) is Verdict.QUEUE
    assert admission.arrive(any_room=True) is Verdict.QUEUE  # someone is already waiting
    admission.leave_queue()
    admission.leave_queue()
    assert admission.arrive(any_room=True) is Verdict.ADMIT


@pytest.mark.parametrize(
    "settings",
    [AdmissionSettings(max_pending=0), AdmissionSettings(queue_timeout_s=0)],
)
def test_no_queue_sheds_at_once(settings: AdmissionSettings) -> None:
    admission = AdmissionController(settings)
    assert admission.arrive(any_room=False) is Verdict.SHED
    assert admission.pending == 0
    assert admission.arrive(any_room=True) is Verdict.ADMIT


def test_queue_deadline_and_time_left() -> None:
    admission = AdmissionController(AdmissionSettings(queue_timeout_s=1.5))
    deadline = admission.queue_deadline(100.0)
    assert deadline == 101.5
    assert admission.wait_left_s(deadline, 100.5) == 1.0
    assert admission.wait_left_s(deadline, 102.0) == 0.0


def test_unbalanced_leave_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        AdmissionController().leave_queue()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_requests_per_backend": 0}, "max_requests_per_backend"),
        ({"max_pending": -1}, "max_pending"),
        ({"queue_timeout_s": -0.1}, "queue_timeout_s"),
    ],
)
def test_invalid_settings(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        AdmissionSettings(**kwargs)
