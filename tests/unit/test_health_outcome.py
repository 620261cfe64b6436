import pytest

from gateway.health import Outcome, classify


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.SUCCESS),
        (499, Outcome.SUCCESS),
        (500, Outcome.HTTP_5XX),
        (501, Outcome.HTTP_5XX),
        (502, Outcome.GATEWAY_FAILURE),
        (503, Outcome.GATEWAY_FAILURE),
        (504, Outcome.GATEWAY_FAILURE),
        (505, Outcome.HTTP_5XX),
        (599, Outcome.HTTP_5XX),
    ],
)
def test_status_classes(status: int, expected: Outcome) -> None:
    assert classify(status, local_error=False) is expected


def test_local_error_wins_over_status() -> None:
    assert classify(None, local_error=True) is Outcome.LOCAL_ORIGIN_FAILURE
    assert classify(200, local_error=True) is Outcome.LOCAL_ORIGIN_FAILURE


def test_cancelled_wins_over_everything() -> None:
    assert classify(503, local_error=True, cancelled=True) is Outcome.CANCELLED
    assert classify(None, local_error=False, cancelled=True) is Outcome.CANCELLED


def test_missing_status_without_error_is_rejected() -> None:
    with pytest.raises(ValueError, match="status"):
        classify(None, local_error=False)


def test_failure_kinds() -> None:
    assert [o for o in Outcome if o.is_failure] == [
        Outcome.HTTP_5XX,
        Outcome.GATEWAY_FAILURE,
        Outcome.LOCAL_ORIGIN_FAILURE,
    ]
    assert [o for o in Outcome if o.is_gateway_failure] == [
        Outcome.GATEWAY_FAILURE,
        Outcome.LOCAL_ORIGIN_FAILURE,
    ]
