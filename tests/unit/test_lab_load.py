"""wrk's output as figures (opsbook.lab.load.parse_wrk): what the load tests and benchmarks print."""

from __future__ import annotations

import pytest

from opsbook.lab.load import parse_wrk

OUT = """Running 3m test @ https://e2e-app1.opsbook.test/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    35.10ms   20.11ms 410.00ms   80.00%
  Latency Distribution
     50%   31.20ms
     75%   40.00ms
     90%   55.00ms
     99%    1.20s
  150000 requests in {took}, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:    755.10
"""


@pytest.mark.parametrize(("took", "seconds"), [("12.34s", 12.34), ("3.31m", 198.6), ("1.02h", 3672.0),
                                               ("850.00ms", 0.85)])
def test_a_run_of_minutes_or_hours_is_counted_in_seconds(took: str, seconds: float) -> None:
    # wrk switches to minutes past 60 s: "3.31m" read as seconds gave 0.0 (the node e2e printed it)
    fig = parse_wrk(OUT.format(took=took))
    assert fig["seconds"] == pytest.approx(seconds)
    assert fig["requests"] == 150000 and fig["non2xx"] == 4 and fig["socket_errors"] == 5
    assert fig["p50_ms"] == 31.2 and fig["p99_ms"] == 1200.0 and fig["rps"] == 755.1
