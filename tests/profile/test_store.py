import numpy as np

from ssmkit.profile import TraceStore
from ssmkit.profile.events import EVENT_COLUMNS, MOE_COLUMNS


def test_write_batch_stores_event_rows_and_event_columns_alike_and_moe_rows_as_given():
    events = [(1, i, 0, "decode", 2, i % 3, "moe" if i % 2 else "mlp", 4, 1, 100 * i, 7 + i) for i in range(5)]
    # Two experts per row and two rows: a square list-of-lists that must stay one list per row; None mixed in.
    moe = [(1, 1, 1, 4, [3, 5], 1.25, None, 1, 0, [4, 4], [0, 1], 10, 20, None),
           (1, 3, 0, 4, [8, 0], 2.0, 4, 4, 4, None, None, None, None, 30)]
    with TraceStore() as by_rows, TraceStore() as by_columns:
        by_rows.write_batch(events, moe)
        by_columns.write_batch({name: np.array(col) for name, col in zip(EVENT_COLUMNS, zip(*events))}, moe)
        for store in (by_rows, by_columns):
            assert store.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY call_id")[1] == events
            assert store.query(f"SELECT {', '.join(MOE_COLUMNS)} FROM moe_routing ORDER BY call_id")[1] == moe
