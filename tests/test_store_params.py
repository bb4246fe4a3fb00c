"""A bound text parameter reaches chDB as exactly the caller's string."""

import json
import subprocess
import sys

from tests.gateway_process import ROOT

# Run in a child: chDB keeps one data directory (or :memory:) per process.
CHILD = """
import json, sys
import chdb
from sfpltracker.store.embedded.store import escaped
conn = chdb.connect(":memory:")
out = []
for value in json.loads(sys.argv[1]):
    try:
        data = conn.query("SELECT {s:String} AS s", "JSONEachRow", params=escaped({"s": value}))
        out.append(json.loads(data.bytes())["s"])
    except Exception as e:
        out.append("ERROR " + str(e)[:80])
print(json.dumps(out))
"""


def test_text_parameters_are_bound_verbatim():
    values = [
        "plain",
        "tab\there",
        "line\nfeed",
        "cr\rhere",
        "back\\slash",
        "\\t",
        "end\\",
        "n\0ul",
    ]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(values)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == values
