"""Log lines stay whole: the node's JSON lines and kazoo's warnings share one stream, from
many threads, and a reader (the lab, the chaos checker, a log shipper) parses line by line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import logging, threading, structlog
from taskman import logs
logs.configure("info", "json")
log = structlog.get_logger("t")
kazoo = logging.getLogger("kazoo.client")
def ours():
    for i in range(3000):
        log.info("node.self_fenced", reason="x" * 40, i=i)
def theirs():
    for i in range(3000):
        kazoo.warning("Connection dropped: socket connection broken")
threads = [threading.Thread(target=f) for f in (ours, theirs, ours, theirs)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_json_lines_and_library_warnings_never_share_a_line(tmp_path: Path) -> None:
    out = tmp_path / "node.log"
    with out.open("w") as stream:
        subprocess.run([sys.executable, "-c", WRITER], stderr=stream, check=True, timeout=120)
    ours = theirs = 0
    for line in out.read_text().splitlines():
        if line.startswith("kazoo.client WARNING"):
            assert line == "kazoo.client WARNING Connection dropped: socket connection broken"
            theirs += 1
        else:
            assert json.loads(line)["event"] == "node.self_fenced", line
            ours += 1
    assert (ours, theirs) == (6000, 6000)
