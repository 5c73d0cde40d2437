"""The router database: concurrent decisions from several threads each get their own sequence number and every
outcome lands in the sums exactly once; a file of another schema version is refused with its name in the error.
"""

import sqlite3
import threading

import pytest
import torch

from ssmkit.route import RequestFeatures, Router
from ssmkit.route.store import FeedbackStore
from tests.compare import assert_close


def test_concurrent_decisions_and_outcomes_are_all_recorded_once(tmp_path):
    router = Router(db=tmp_path / "r.db")
    posted = []

    def client(k):
        for i in range(50):
            d = router.decide(RequestFeatures(100 + k, "chat"), request_id=f"{k}-{i}")
            router.record_quality(d.request_id, (i % 10) / 10)
            router.record_latency(d.request_id, 10.0)
            posted.append((i % 10) / 10 * 0.7 + 0.3)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = router.state()
    assert sorted(row[0] for row in state["decisions"]) == list(range(1, 201))
    assert state["meta"]["decisions"] == "200"
    arms = router.store.arms("0-1999/chat")
    assert sum(n for n, _ in arms.values()) == 200
    assert_close(torch.tensor(sum(s for _, s in arms.values()), dtype=torch.float64),
                 torch.tensor(sum(posted), dtype=torch.float64))


def test_database_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "old.db"
    FeedbackStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match=f"{path}: router database schema version 0, this ssmkit reads version 1"):
        Router(db=path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello " * 1000)
    with pytest.raises(ValueError, match="not a router database"):
        Router(db=path)
