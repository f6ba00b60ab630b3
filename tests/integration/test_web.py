"""The web UI over HTTP, as a real ``taskman ui`` process against the real database.

Auth, CSRF, escaping, actions and the task list's paging; the browser tests
(tests/browser) cover what a person sees.
"""

from __future__ import annotations

import base64
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from taskman import Client, TaskState
from taskman.cli import run
from taskman.states import TaskState as State
from taskman.store import Database, make_database
from taskman.store.dashboard import DashboardStore, TaskFilter
from tests.browser.support import UIProcess

TOKEN = "t0ken-for-the-ui-tests-7d1c"


class Browser:
    """urllib with a cookie jar and no automatic redirects: every status is seen."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def request(
        self,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "taskman_csrf")  # type: ignore[misc]


@pytest.fixture
def open_ui(dsn: str, tmp_path: Path) -> Iterator[UIProcess]:
    process = UIProcess(dsn, tmp_path / "ui.log").start()
    yield process
    process.stop()


def test_refuses_to_serve_open_on_a_public_address(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TASKMAN_UI_TOKEN", "TASKMAN_UI_BASIC_AUTH"):
        monkeypatch.delenv(name, raising=False)
    for listen in ("0.0.0.0:8099", "[::]:8099", "192.0.2.10:8099", "ui.example.com:8099"):
        assert run(["ui", "--dsn", dsn, "--listen", listen]) == 78, listen
    monkeypatch.setenv("TASKMAN_UI_TOKEN", "short")
    assert run(["ui", "--dsn", dsn, "--listen", "0.0.0.0:8099"]) == 78  # too short to count


def test_token_auth_login_and_bearer(dsn: str, tmp_path: Path) -> None:
    ui = UIProcess(dsn, tmp_path / "ui.log", env={"TASKMAN_UI_TOKEN": TOKEN}).start()
    try:
        b = Browser(ui.url)
        status, headers, _ = b.request("/tasks?state=failed")
        assert status == 303 and headers["location"].startswith("/login?next=")
        assert b.request("/live/dashboard")[0] == 303
        assert b.request("/", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert b.request("/", headers={"Authorization": "Bearer wrong-token-000000"})[0] == 303
        assert b.request("/login")[0] == 200
        assert b.request("/login", {"csrf": b.csrf(), "token": "nope"})[0] == 401
        assert b.request("/login", {"token": TOKEN})[0] == 403  # no CSRF token
        status, headers, _ = b.request(
            "/login?next=//evil.example/", {"csrf": b.csrf(), "token": TOKEN}
        )
        assert status == 303 and headers["location"] == "/"  # never off-site
        assert b.request("/")[0] == 200  # the session cookie now
        assert b.request("/logout", {"csrf": b.csrf()})[0] == 303
        assert b.request("/")[0] == 303
    finally:
        ui.stop()


def test_basic_auth(dsn: str, tmp_path: Path) -> None:
    ui = UIProcess(
        dsn, tmp_path / "ui.log", env={"TASKMAN_UI_BASIC_AUTH": "ops:s3cret-pass"}
    ).start()
    try:
        b = Browser(ui.url)
        status, headers, _ = b.request("/")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"ops:s3cret-pass").decode()
        bad = base64.b64encode(b"ops:guess").decode()
        assert b.request("/", headers={"Authorization": f"Basic {good}"})[0] == 200
        assert b.request("/", headers={"Authorization": f"Basic {bad}"})[0] == 401
    finally:
        ui.stop()


def test_actions_need_csrf_and_report_a_clear_result(client: Client, open_ui: UIProcess) -> None:
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
    b = Browser(open_ui.url)
    status, headers, body = b.request(f"/tasks/{task_id}/abort")  # the confirmation page
    assert status == 200 and "Yes, abort task" in body
    assert "content-security-policy" in {k.lower() for k in headers}
    assert b.request(f"/tasks/{task_id}/abort", {})[0] == 403
    assert b.request(f"/tasks/{task_id}/abort", {"csrf": "forged"})[0] == 403
    foreign = {"Origin": "http://evil.example"}
    assert b.request(f"/tasks/{task_id}/abort", {"csrf": b.csrf()}, foreign)[0] == 403
    assert client.get(task_id).state is TaskState.QUEUED  # nothing happened

    status, headers, _ = b.request(f"/tasks/{task_id}/abort", {"csrf": b.csrf()})
    assert status == 303
    assert client.get(task_id).state is TaskState.ABORTED
    status, _, body = b.request(headers["location"])
    assert f"Task {task_id} was aborted before it started." in body

    status, _, body = b.request(f"/tasks/{task_id}/abort", {"csrf": b.csrf()})
    assert status == 409 and "already aborted" in body  # a clear refusal, not a crash
    status, headers, _ = b.request(f"/tasks/{task_id}/retry", {"csrf": b.csrf()})
    assert status == 303 and "notice=retried" in headers["location"]
    assert client.get(task_id).state is TaskState.QUEUED
    assert b.request("/tasks/999999")[0] == 404
    assert b.request(f"/tasks/{task_id}/delete", {"csrf": b.csrf()})[0] == 404


def test_everything_from_tasks_is_escaped(client: Client, open_ui: UIProcess) -> None:
    hostile = "<script>alert('x')</script><b onmouseover=alert(1)>"
    task_id = client.submit(
        "demo.tasks:add",
        plugin="demo",
        args=(hostile,),
        kwargs={"k": hostile},
        idempotency_key=f"key-{hostile}",
    )
    b = Browser(open_ui.url)
    for path in (
        f"/tasks/{task_id}",
        f"/tasks/{task_id}/live",
        "/tasks",
        f"/tasks?q=key-{hostile}",
    ):
        status, _, body = b.request(path.replace(hostile, urllib.parse.quote(hostile)))
        assert status == 200, path
        assert "<script>alert" not in body and "<b onmouseover" not in body, path
    body = b.request(f"/tasks/{task_id}")[2]
    assert "&lt;script&gt;alert(" in body


def test_schedules_page_pauses_and_resumes(client: Client, open_ui: UIProcess) -> None:
    client.add_schedule("pulse", "demo.tasks:add", plugin="demo", args=(1, 2), every=60)
    b = Browser(open_ui.url)
    status, _, body = b.request("/schedules")
    assert status == 200 and "pulse" in body and "every 1 min 0 s" in body
    assert b.request("/schedules/pulse/pause", {})[0] == 403
    status, headers, _ = b.request("/schedules/pulse/pause", {"csrf": b.csrf()})
    assert status == 303 and client.get_schedule("pulse").paused
    assert "is paused" in b.request(headers["location"])[2]
    assert b.request("/schedules/pulse/resume", {"csrf": b.csrf()})[0] == 303
    assert not client.get_schedule("pulse").paused
    assert b.request("/schedules/nope/pause", {"csrf": b.csrf()})[0] == 404


def test_dashboard_without_zookeeper_and_with_it_unreachable(dsn: str, tmp_path: Path) -> None:
    for zookeeper, expected in (
        (None, "ZooKeeper is not configured"),
        ("127.0.0.1:1", "cannot reach"),
    ):
        ui = UIProcess(dsn, tmp_path / "ui.log", zookeeper=zookeeper).start()
        try:
            status, _, body = Browser(ui.url).request("/")
            assert status == 200 and expected in body
        finally:
            ui.stop()


def _ids(store: DashboardStore, flt: TaskFilter, **kw: object) -> tuple[list[int], int]:
    """Every id a user reaches by following Older / Search older links, and the pages."""
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        page = store.page(flt, before=before, limit=7, **kw)  # type: ignore[arg-type]
        pages += 1
        seen += [r.id for r in page.rows]
        before = page.older if page.older is not None else page.searched_to
        if before is None:
            return seen, pages


_SQLITE_400_TASKS = (  # the same rows as the MariaDB statement, from a recursive CTE
    "WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 400) "
    "INSERT INTO tasks (request_id, plugin, `function`, args, kwargs, run_after, max_attempts, "
    "state, owner_datacenter, created_at) "
    "SELECT hex(randomblob(16)), 'p' || (seq % 3), 'm:f' || (seq % 5), '[]', '{}', tm_now(), 1, "
    "CASE seq % 4 WHEN 0 THEN 'queued' WHEN 2 THEN 'failed' ELSE 'succeeded' END, "
    "'dc' || (seq % 2), tm_add_us(tm_now(), -60000000 * (400 - seq)) FROM s"
)


def test_task_list_pages_reach_every_match_exactly_once(store_dsn: str) -> None:
    """Keyset pages, id windows and time ordering against the truth from plain SQL (both backends)."""
    db = make_database(store_dsn)
    if db.dialect == "sqlite":
        db.execute(_SQLITE_400_TASKS)
    else:
        db.execute(
            "INSERT INTO tasks (request_id, plugin, `function`, args, kwargs, run_after, "
            "max_attempts, state, owner_datacenter, created_at) "
            "SELECT MD5(seq), CONCAT('p', seq % 3), CONCAT('m:f', seq % 5), '[]', '{}', NOW(6), "
            "1, ELT(1 + seq % 4, 'queued', 'succeeded', 'failed', 'succeeded'), "
            "CONCAT('dc', seq % 2), NOW(6) - INTERVAL (400 - seq) MINUTE FROM seq_1_to_400"
        )
    store = DashboardStore(db)
    rows = db.query("SELECT id, state, plugin, `function`, owner_datacenter, created_at FROM tasks")
    cases = [
        (TaskFilter(), lambda r: True),
        (TaskFilter(state=State.FAILED), lambda r: r["state"] == "failed"),
        (
            TaskFilter(plugin="p1", state=State.SUCCEEDED),
            lambda r: r["plugin"] == "p1" and r["state"] == "succeeded",
        ),
        (TaskFilter(function="m:f2"), lambda r: r["function"] == "m:f2"),
        (
            TaskFilter(datacenter="dc1", plugin="p0"),
            lambda r: r["owner_datacenter"] == "dc1" and r["plugin"] == "p0",
        ),
    ]
    for flt, match in cases:
        truth = sorted((r["id"] for r in rows if match(r)), reverse=True)
        # Tiny windows force many window statements and "search older" stops.
        got, pages = _ids(store, flt, first_window=16, budget=0.0)
        assert got == truth, flt
        assert pages >= len(truth) // 7
        got, _ = _ids(store, flt)
        assert got == truth, flt
    # A time window walks tasks_created: newest first, complete.
    since, until = rows[99]["created_at"], rows[199]["created_at"]
    flt = TaskFilter(
        since=since.replace(tzinfo=UTC), until=until.replace(tzinfo=UTC), state=State.QUEUED
    )
    truth = sorted(
        (r["id"] for r in rows if since <= r["created_at"] < until and r["state"] == "queued"),
        reverse=True,
    )
    got, _ = _ids(store, flt)
    assert got == truth and len(truth) == 25
    # Search: exact id, and keys by prefix.
    assert [r.id for r in store.page(TaskFilter(search=str(truth[0]))).rows] == [truth[0]]
    db.close()


def test_task_list_queries_use_their_indexes(dsn: str) -> None:
    """EXPLAIN: no statement of the list reads the table without an index it chose."""
    db = Database(dsn)
    db.execute(
        "INSERT INTO tasks (request_id, plugin, `function`, args, kwargs, run_after, max_attempts, "
        "state, created_at) SELECT MD5(seq), 'p', 'm:f', '[]', '{}', NOW(6), 1, "
        "IF(seq % 50 = 0, 'failed', 'succeeded'), NOW(6) - INTERVAL (20000 - seq) SECOND "
        "FROM seq_1_to_20000"
    )
    db.execute("ANALYZE TABLE tasks")
    from taskman.store import queries as q

    def plan(sql: str, args: list[object]) -> list[dict[str, object]]:
        return db.query("EXPLAIN " + sql, args)

    time_sql = q.UI_LIST_BY_TIME + q.UI_FILTERS["since"] + q.UI_FILTERS["until"] + q.UI_ORDER_TIME
    (row,) = plan(time_sql, ["2000-01-01", "2100-01-01", 51])
    assert row["key"] == "tasks_created" and "filesort" not in str(row["Extra"])
    window_sql = (
        q.UI_LIST
        + q.UI_FILTERS["function"]
        + q.UI_FILTERS["id_below"]
        + q.UI_FILTERS["id_from"]
        + q.UI_ORDER_ID
    )
    (row,) = plan(window_sql, ["m:f", 20001, 1, 51])
    assert row["key"] == "PRIMARY" and row["type"] == "range"
    plugin_state = q.UI_LIST + q.UI_FILTERS["state"] + q.UI_FILTERS["plugin"] + q.UI_ORDER_ID
    (row,) = plan(plugin_state, ["failed", "p", 51])
    assert row["key"] == "tasks_plugin" and "filesort" not in str(row["Extra"])
    key_sql = q.UI_LIST + q.UI_FILTERS["key_prefix"] + q.UI_ORDER_KEY
    (row,) = plan(key_sql, ["order-%", 51])
    assert row["key"] == "tasks_idempotency_key" and "filesort" not in str(row["Extra"])
    (row,) = plan(q.UI_THROUGHPUT, [300, 3600])
    assert row["key"] == "tasks_finished"
    db.close()


def test_running_counts_in_html(client: Client, open_ui: UIProcess) -> None:
    for _ in range(3):
        client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
    body = Browser(open_ui.url).request("/")[2]
    match = re.search(r'id="count-queued">\s*<span class="n">(\d+)<', body)
    assert match and match.group(1) == "3"
