"""Progress formatting for long jobs (rewrap, migrations)."""

from __future__ import annotations

from s3proxy import progress


def test_rate_and_eta() -> None:
    assert progress.rate_eta(50, 200, 10.0) == "5.0 objects/s, ETA 30s"
    assert progress.rate_eta(50, None, 10.0) == "5.0 objects/s"  # total unknown while listing
    assert progress.rate_eta(0, 100, 10.0) == "0 objects/s"
    assert progress.rate_eta(5, 5, 0.0) == "0 objects/s"


def test_duration_bar_bytes() -> None:
    assert progress.duration(3725) == "1h02m05s"
    assert progress.duration(65) == "1m05s"
    assert progress.duration(-3) == "0s"
    assert progress.bar(5, 20) == "[#####...............]"
    assert progress.bar(30, 20) == "[####################]"
    assert progress.bar(1, 0) == "[....................]"
    assert progress.human_bytes(5 * 2**30) == "5.0 GiB"
    assert progress.human_bytes(512) == "512 B"
