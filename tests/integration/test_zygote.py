"""Runners forked from a zygote behave like cold-spawned ones (real nodes, MariaDB, ZooKeeper)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from taskman import Client, TaskState
from taskman.lab.nodes import NodeProcess
from taskman.plugins import EXAMPLES_DIR
from tests.integration.cluster_support import pid_alive, read_log, wait_state, wait_until
from tests.integration.conftest import StartNode


def plugins(tmp_path: Path, *, fork: bool, preload: bool = False) -> list[str]:
    """A copy of the demo plugin with the runner-start keys set."""
    target = tmp_path / ("plugins-fork" if fork else "plugins-cold")
    if not target.exists():
        shutil.copytree(EXAMPLES_DIR / "demo", target / "demo")
        manifest = target / "demo" / "plugin.toml"
        lines = manifest.read_text().splitlines()
        first_table = next(i for i, line in enumerate(lines) if line.startswith("["))
        extra = [f"fork = {'true' if fork else 'false'}"]
        if preload:
            extra.append('preload = ["demo.tasks"]')
        lines[first_table:first_table] = extra
        manifest.write_text("\n".join(lines) + "\n")
    return [str(target)]


def proc_info(pid: int) -> tuple[int, int, str]:
    """(ppid, session id, command line) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return int(fields[1]), int(fields[3]), cmd


def zygote_pids(node: NodeProcess) -> list[int]:
    return [int(e["pid"]) for e in node.events() if e.get("event") == "zygote.started"]


def running_pid(log: Path, task_id: int) -> int:
    def started() -> int | None:
        rows = [r for r in read_log(log) if r[0] == task_id and r[4] == "start"]
        return rows[-1][3] if rows else None

    return int(wait_until(started, 30, f"task {task_id} to start"))


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "cold"])
def test_runner_runs_in_its_own_session_under_the_node_or_its_zygote(
    start_node: StartNode, client: Client, tmp_path: Path, fork: bool
) -> None:
    node = start_node("a", plugin_dirs=plugins(tmp_path, fork=fork, preload=fork))
    log = tmp_path / "exec.log"
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(1.0, str(log)))
    pid = running_pid(log, task_id)
    ppid, session, cmd = proc_info(pid)
    # A cold runner is the node's child; a forked one the zygote's, which reaps it and
    # tells the node its exit status (and if the zygote dies, the node adopts it).
    assert ppid == (zygote_pids(node)[0] if fork else node.pid)
    assert session == pid  # its own session and process group, as start_new_session gives
    assert ("zygote.py" in cmd) is fork and ("child.py" in cmd) is not fork
    task = wait_state(client, task_id, TaskState.SUCCEEDED)
    assert task.result["pid"] == pid
    assert len(zygote_pids(node)) == (1 if fork else 0)
    who = wait_state(client, client.submit("demo.tasks:whoami", plugin="demo"), TaskState.SUCCEEDED)
    assert who.result["greeting"] == "hello from demo"  # the plugin's environment
    assert who.result["task_id"] == who.id and who.result["fence"] == who.fence  # runtime bound


def test_a_crashing_forked_runner_does_not_touch_the_others(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugins(tmp_path, fork=True, preload=True))
    sleepers = [client.submit("demo.tasks:sleep", plugin="demo", args=(2.0,)) for _ in range(2)]
    wait_until(
        lambda: all(client.get(t).state is TaskState.RUNNING for t in sleepers), 30, "sleepers"
    )
    crash = client.submit("demo.tasks:crash", plugin="demo", max_attempts=1)
    crashed = wait_state(client, crash, TaskState.FAILED)
    assert "SIGKILL" in (crashed.error_message or "")
    assert "about to crash" in (crashed.attempts[0].output_tail or "")  # output of a forked runner
    for task_id in sleepers:
        assert wait_state(client, task_id, TaskState.SUCCEEDED).result["slept"] == 2.0
    (zygote,) = zygote_pids(node)
    assert pid_alive(zygote)  # one zygote served all of them and is still there


def test_output_capture_and_limits_in_forked_runners(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugins(tmp_path, fork=True))
    chatty = wait_state(
        client, client.submit("demo.tasks:chatty", plugin="demo", args=(3000,)), TaskState.SUCCEEDED
    )
    tail = chatty.attempts[0].output_tail or ""
    assert tail.endswith("line 2999\n") and len(tail) <= 64 * 1024
    hog = client.submit(
        "demo.tasks:hog_memory",
        plugin="demo",
        args=(2000,),
        limits={"memory_mb": 300},
        max_attempts=1,
    )
    task = wait_state(client, hog, TaskState.FAILED)
    assert task.error_type == "LimitExceeded"
    files = client.submit(
        "demo.tasks:open_many",
        plugin="demo",
        args=(500,),
        limits={"open_files": 64},
        max_attempts=1,
    )
    assert wait_state(client, files, TaskState.FAILED).error_type == "LimitExceeded"
    assert len(zygote_pids(node)) == 1  # the limits applied to forks, not the zygote


def test_a_killed_zygote_leaves_running_attempts_alone_and_is_replaced(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugins(tmp_path, fork=True))
    log = tmp_path / "exec.log"
    running = client.submit("demo.tasks:sleep", plugin="demo", args=(2.0, str(log)))
    pid = running_pid(log, running)
    (zygote,) = zygote_pids(node)
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: not pid_alive(zygote), 10, "the zygote to die")
    assert pid_alive(pid)  # no parent-death signal on the zygote
    wait_until(lambda: proc_info(pid)[0] == node.pid, 10, "the node to adopt the runner")
    # The node reaps the adopted runner itself: its real exit status, not a guess.
    assert wait_state(client, running, TaskState.SUCCEEDED).result["pid"] == pid
    after = wait_state(
        client, client.submit("demo.tasks:add", plugin="demo", args=(2, 3)), TaskState.SUCCEEDED
    )
    assert after.result == 5
    wait_until(lambda: len(zygote_pids(node)) == 2, 10, "a new zygote")
    assert any(e.get("event") == "zygote.lost" for e in node.events())


def test_node_death_takes_the_zygote_and_its_forks(
    start_node: StartNode, client: Client, tmp_path: Path
) -> None:
    node = start_node("a", plugin_dirs=plugins(tmp_path, fork=True))
    log = tmp_path / "exec.log"
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(60.0, str(log)))
    pid = running_pid(log, task_id)
    (zygote,) = zygote_pids(node)
    node.kill()
    wait_until(lambda: not pid_alive(pid) and not pid_alive(zygote), 5, "runner and zygote to die")


def test_manifest_keys_are_checked(tmp_path: Path) -> None:
    from taskman.errors import PluginError
    from taskman.plugins.manifest import KNOWN_KEYS, load_manifest

    directory = tmp_path / "p"
    directory.mkdir()
    manifest = directory / "plugin.toml"
    root = "allow_root = true\n" if "allow_root" in KNOWN_KEYS else ""  # the node may be root
    manifest.write_text(f'name = "p"\nversion = "1"\n{root}fork = false\npreload = ["a.b", "c"]\n')
    plugin = load_manifest(directory)
    assert plugin.fork is False and plugin.preload == ("a.b", "c")
    for bad in ('fork = "no"', 'preload = ["not a module"]', 'preload = "a"'):
        manifest.write_text(f'name = "p"\nversion = "1"\n{root}{bad}\n')
        with pytest.raises(PluginError):
            load_manifest(directory)
