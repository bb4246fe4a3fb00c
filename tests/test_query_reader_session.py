"""The embedded store's reader sessions, behind the query listener's guard (defence in depth).

``store/query_guard.py`` refuses every table function before chDB sees the query; should a
query get past it, the reader session itself has no ``Python()`` table function (which reads
the process's own Python objects by name, DESCRIBE even under ``readonly = 1``) and no
introspection functions (on by default in chDB).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from sfpltracker.store.errors import StoreError


@pytest_twisted.inlineCallbacks
def test_a_reader_session_reads_no_python_objects_and_has_no_introspection(store):
    # One test: a chDB process opens one data directory at a time.
    # ``params`` is a local of the reader thread's frame: Python() would find it by name.
    for sql in ("DESCRIBE Python(params)", "SELECT * FROM Python(params)"):
        with pytest.raises(StoreError) as refused:
            yield store.query(sql, "TSV", params={"k": ["in-process secret"]})
        assert refused.value.code in (164, 446), refused.value  # readonly / disabled
        assert "in-process secret" not in str(refused.value)
    with pytest.raises(StoreError) as refused:
        yield store.query("DESCRIBE Python(params)", "TSV", params={"k": "x"})
    assert "allow_python_table_function" in str(refused.value)
    with pytest.raises(StoreError) as refused:
        yield store.query("SELECT addressToSymbol(toUInt64(0))", "TSV")
    assert "allow_introspection_functions" in str(refused.value)
