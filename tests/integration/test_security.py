"""Security against real servers: ZooKeeper ACLs, secrets, least privilege, unprivileged runners."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, Id, Permissions

from taskman import Client, TaskState, UnservedError
from taskman.cluster.layout import ClusterPaths
from taskman.errors import StoreError
from taskman.lab import MariaDBServer, ZooKeeperEnsemble
from taskman.lab.servers import LabError
from taskman.store import Database
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode


def _anonymous(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=5)
    client.start(timeout=10)
    return client


def test_other_clients_of_the_ensemble_can_neither_read_nor_forge(
    start_node: StartNode, client: Client, zookeeper: ZooKeeperEnsemble, cluster_name: str
) -> None:
    start_node("a")
    task_id = client.submit("demo.tasks:sleep", plugin="demo", args=(3,))
    wait_state(client, task_id, TaskState.RUNNING)
    paths = ClusterPaths(cluster_name)
    intruder = _anonymous(zookeeper.hosts)
    try:
        for path in (paths.nodes, paths.claims, paths.leader):
            with pytest.raises(NoAuthError):
                intruder.get_children(path)
        with pytest.raises(NoAuthError):
            intruder.create(f"{paths.claims}/{task_id}.2", b"forged", ephemeral=True)
        with pytest.raises(NoAuthError):
            intruder.create(f"{paths.nodes}/evil", b"{}", ephemeral=True)
        with pytest.raises(NoAuthError):
            intruder.delete(f"{paths.claims}/{task_id}.1")
    finally:
        intruder.stop()
        intruder.close()
    assert wait_state(client, task_id, TaskState.SUCCEEDED).attempt == 1


def test_anyone_may_bump_the_wake_znode_and_nothing_more(
    start_node: StartNode, zookeeper: ZooKeeperEnsemble, cluster_name: str
) -> None:
    start_node("a")
    paths = ClusterPaths(cluster_name)
    intruder = _anonymous(zookeeper.hosts)
    try:
        intruder.set(paths.wake, b"")  # a wake-up carries no authority: allowed
        with pytest.raises(NoAuthError):
            intruder.delete(paths.wake)
        with pytest.raises(NoAuthError):
            intruder.set_acls(paths.wake, [ACL(Permissions.ALL, Id("world", "anyone"))])
        with pytest.raises(NoAuthError):
            intruder.create(f"{paths.wake}/child", b"")
    finally:
        intruder.stop()
        intruder.close()


def test_a_node_refuses_an_open_namespace_unless_insecure(
    start_node: StartNode, zookeeper: ZooKeeperEnsemble, cluster_name: str
) -> None:
    # Someone created the namespace without an ACL (world-writable).
    anonymous = _anonymous(zookeeper.hosts)
    try:
        anonymous.ensure_path(ClusterPaths(cluster_name).base)
    finally:
        anonymous.stop()
        anonymous.close()
    with pytest.raises(LabError, match="open to every client of the ensemble"):
        start_node("a")
    node = start_node("b", zookeeper_auth=None, insecure=True)
    assert node.alive()


def test_a_node_with_the_wrong_identity_is_refused(start_node: StartNode) -> None:
    start_node("a")
    with pytest.raises(LabError, match="belongs to another identity"):
        start_node("b", zookeeper_auth="taskman:wrong-password")


def test_without_zookeeper_auth_the_node_refuses_to_start(start_node: StartNode) -> None:
    with pytest.raises(LabError, match="no 'zookeeper_auth'"):
        start_node("a", zookeeper_auth=None)


def test_secrets_from_files_run_a_node(
    start_node: StartNode, client: Client, dsn: str, tmp_path: Path
) -> None:
    from tests.integration.cluster_support import ZK_AUTH

    (tmp_path / "dsn").write_text(dsn + "\n")
    (tmp_path / "zk").write_text(ZK_AUTH + "\n")
    start_node(
        "a",
        dsn=None,
        zookeeper_auth=None,
        dsn_file=str(tmp_path / "dsn"),
        zookeeper_auth_file=str(tmp_path / "zk"),
    )
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 1))
    assert wait_state(client, task_id, TaskState.SUCCEEDED).result == 2


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder an unprivileged runner can enter (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="taskman-public-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_runners_drop_to_the_plugins_user_before_task_code_runs(
    start_node: StartNode, client: Client, public_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs a node running as root")
    secret = public_dir / "root-only"
    secret.write_text("root's eyes only")
    secret.chmod(0o600)
    plugin = public_dir / "plugins" / "unprivileged"
    (plugin / "src").mkdir(parents=True)
    (plugin / "plugin.toml").write_text(
        # An interpreter the plugin's user can read (this machine's pyenv lives under /root).
        'name = "unprivileged"\nversion = "1.0"\npython = "/usr/bin/python3"\npath = ["src"]\n'
        'user = "nobody"\n'
        'group = "nogroup"\n[env]\nPLUGIN_SETTING = "on"\n'
    )
    (plugin / "src" / "who.py").write_text(
        "import os\n\n"
        "def run(path):\n"
        "    try:\n"
        "        open(path).read()\n"
        "        readable = True\n"
        "    except PermissionError:\n"
        "        readable = False\n"
        "    print('hello from', os.getuid())\n"
        "    return {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),\n"
        "            'groups': os.getgroups(), 'home': os.environ.get('HOME'),\n"
        "            'env': sorted(os.environ), 'read_root_file': readable}\n"
    )
    for folder in (plugin, plugin / "src"):
        folder.chmod(0o755)
    start_node("a", plugin_dirs=[str(public_dir / "plugins")])
    task_id = client.submit("who:run", plugin="unprivileged", args=(str(secret),))
    task = wait_until(lambda: (t := client.get(task_id)).state.terminal and t, 30, "the task")
    assert task.state is TaskState.SUCCEEDED, [
        (a.outcome, a.error_message, a.output_tail) for a in task.attempts
    ]
    nobody = pwd.getpwnam("nobody")
    assert task.result["uid"] == task.result["euid"] == nobody.pw_uid
    assert task.result["gid"] == grp.getgrnam("nogroup").gr_gid and task.result["groups"] == []
    assert task.result["home"] == nobody.pw_dir
    assert task.result["read_root_file"] is False
    # The plugin's environment and a few basics: nothing of the node's.
    allowed = {
        "PLUGIN_SETTING",
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "USER",
        "LOGNAME",
        "PYTHONUNBUFFERED",
        "LC_CTYPE",
    }
    assert set(task.result["env"]) <= allowed, set(task.result["env"]) - allowed
    assert f"hello from {nobody.pw_uid}" in (task.attempts[0].output_tail or "")


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    files = {
        n: folder / f"{n}.pem"
        for n in ("ca", "ca-key", "server", "server-key", "other-ca", "other-ca-key")
    }
    for ca, key in (("ca", "ca-key"), ("other-ca", "other-ca-key")):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN=taskman test {ca}",
                "-keyout",
                str(files[key]),
                "-out",
                str(files[ca]),
            ],
            check=True,
            capture_output=True,
        )
    csr = folder / "server.csr"
    subprocess.run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(files["server-key"]),
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
    )
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca-key"]),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(files["server"]),
        ],
        check=True,
        capture_output=True,
    )
    return files


def test_mysql_tls_with_certificate_verification(tmp_path: Path) -> None:
    certs = _make_certificates(tmp_path)
    server = MariaDBServer(
        tmp_path / "db",
        extra_config=(
            f"ssl_ca={certs['ca']}",
            f"ssl_cert={certs['server']}",
            f"ssl_key={certs['server-key']}",
        ),
    )
    with server:
        server.create_database("secure")
        with server.root_connection() as root, root.cursor() as cur:
            cur.execute("CREATE USER 'tls'@'%' IDENTIFIED BY 'tls-pw-81' REQUIRE SSL")
            cur.execute("GRANT SELECT ON secure.* TO 'tls'@'%'")
        base = f"mysql://tls:tls-pw-81@127.0.0.1:{server.port}/secure"
        db = Database(f"{base}?ssl_ca={certs['ca']}", retry_deadline=2)
        try:
            cipher = db.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0]["Value"]
            assert cipher, "the connection is not encrypted"
        finally:
            db.close()
        # Without TLS the account is refused at once, with a clear error.
        with pytest.raises(StoreError, match="refused") as refused:
            Database(base, retry_deadline=2).query("SELECT 1")
        assert "tls-pw-81" not in str(refused.value)
        # A server certificate from another CA is not accepted.
        with pytest.raises(StoreError, match=r"(?i)certificate"):
            Database(f"{base}?ssl_ca={certs['other-ca']}", retry_deadline=1).query("SELECT 1")


def test_least_privilege_accounts_run_the_cluster(
    mariadb: MariaDBServer, dsn: str, start_node: StartNode
) -> None:
    database = dsn.rsplit("/", 1)[1]
    node_user, client_user = f"n_{database[-10:]}", f"c_{database[-10:]}"
    with mariadb.root_connection() as root, root.cursor() as cur:
        # What docs/security.md prescribes: DML for nodes, less for the thin client.
        cur.execute(f"CREATE USER '{node_user}'@'%' IDENTIFIED BY 'node-pw-7'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{node_user}'@'%'")
        cur.execute(f"CREATE USER '{client_user}'@'%' IDENTIFIED BY 'client-pw-7'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{database}`.tasks TO '{client_user}'@'%'")
        cur.execute(f"GRANT SELECT ON `{database}`.attempts TO '{client_user}'@'%'")
    host = f"127.0.0.1:{mariadb.port}/{database}"
    node_dsn = f"mysql://{node_user}:node-pw-7@{host}"
    client_dsn = f"mysql://{client_user}:client-pw-7@{host}"
    start_node("a", dsn=node_dsn)
    # An account granted before served_plugins existed still submits, unchecked.
    with Client(client_dsn) as client:
        done = client.submit("demo.tasks:add", plugin="demo", args=(2, 2))
        queued = client.submit("demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc9")
        assert wait_state(client, done, TaskState.SUCCEEDED).result == 4
        assert client.why_queued(queued) == []  # what nodes serve is out of its sight
        assert client.abort(queued) is TaskState.ABORTED
    with mariadb.root_connection() as root, root.cursor() as cur:
        cur.execute(f"GRANT SELECT ON `{database}`.served_plugins TO '{client_user}'@'%'")
    # With the grant docs/security.md lists, it refuses what no node serves.
    with Client(client_dsn) as client:
        with pytest.raises(UnservedError, match="datacenter 'dc9'"):
            client.submit("demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc9")
        queued = client.submit(
            "demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc9", allow_unserved=True
        )
        assert client.why_queued(queued) == [
            "its datacenter 'dc9' has no live node (no node has ever run there)"
        ]
        assert client.abort(queued) is TaskState.ABORTED
    # Neither account can change the schema: migrations need the admin DSN.
    for restricted in (node_dsn, client_dsn):
        with pytest.raises(StoreError, match="refused"):
            Database(restricted).execute("CREATE TABLE x (id INT)")


def test_a_planted_secret_reaches_no_output_channel(
    start_node: StartNode,
    mariadb: MariaDBServer,
    dsn: str,
    zk_hosts: str,
    cluster_name: str,
    tmp_path: Path,
) -> None:
    import json
    import sys
    import urllib.request

    from taskman.lab import free_port

    database = dsn.rsplit("/", 1)[1]
    db_secret, zk_secret, env_secret = (
        "Db-Pw-planted-4471",
        "Zk-pw-planted-9123",
        "Env-planted-5512",
    )
    user = f"s_{database[-10:]}"
    with mariadb.root_connection() as root, root.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{db_secret}'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{user}'@'%'")
    secret_dsn = f"mysql://{user}:{db_secret}@127.0.0.1:{mariadb.port}/{database}"
    plugin = tmp_path / "plugins" / "leaky"
    (plugin / "src").mkdir(parents=True)
    (plugin / "plugin.toml").write_text(
        'name = "leaky"\nversion = "1.0"\npath = ["src"]\nallow_root = true\n'
        f'[env]\nAPI_KEY = "{env_secret}"\n'
    )
    (plugin / "src" / "leak.py").write_text(
        "import os\n\n"
        "def run():\n"
        "    print('the key is', os.environ['API_KEY'])\n"
        "    raise RuntimeError('key ' + os.environ['API_KEY'] + ' rejected')\n"
    )
    port = free_port()
    node = start_node(
        "a",
        dsn=secret_dsn,
        zookeeper_auth=f"taskman:{zk_secret}",
        metrics_address=f"127.0.0.1:{port}",
        plugin_dirs=[str(tmp_path / "plugins")],
    )
    with Client(secret_dsn) as client:
        task_id = client.submit("leak:run", plugin="leaky", max_attempts=1)
        task = wait_state(client, task_id, TaskState.FAILED)
    assert "***" in (task.attempts[0].error_message or "")  # scrubbed, not just absent

    def cli(*args: str, **env: str) -> str:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKMAN_")}
        result = subprocess.run(
            [sys.executable, "-m", "taskman", *args],
            capture_output=True,
            text=True,
            env={**environ, **env},
            timeout=60,
            check=False,
        )
        return result.stdout + result.stderr

    channels = {
        "node log": node.log_path.read_text(),
        "metrics": urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode(),
        "readyz": urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").read().decode(),
        "status": cli("status", str(task_id), "--json", TASKMAN_DSN=secret_dsn),
        "show": cli("show", str(task_id), TASKMAN_DSN=secret_dsn),
        "nodes": cli(
            "nodes",
            "--zookeeper",
            zk_hosts,
            "--cluster",
            cluster_name,
            "--json",
            TASKMAN_ZOOKEEPER_AUTH=f"taskman:{zk_secret}",
        ),
        "unreachable db": cli(
            "status",
            "1",
            TASKMAN_DSN=secret_dsn.replace(str(mariadb.port), "1"),
            TASKMAN_RETRY_DEADLINE="1",
        ),
        "denied db": cli("status", "1", TASKMAN_DSN=secret_dsn.replace(db_secret, db_secret + "x")),
        "bad config": cli(
            "node", "--config", str(tmp_path / "missing.toml"), TASKMAN_DSN=secret_dsn
        ),
    }
    assert json.loads(channels["nodes"])["nodes"][0]["node_id"] == "a"
    for channel, text in channels.items():
        for secret in (db_secret, zk_secret, env_secret):
            assert secret not in text, f"{secret} leaked into {channel}"


def test_nodes_reach_zookeeper_over_tls_with_a_verified_certificate(
    dsn: str, tmp_path: Path, cluster_name: str
) -> None:
    from taskman.lab.nodes import NodeProcess
    from taskman.plugins import EXAMPLES_DIR
    from tests.integration.cluster_support import FAST_NODE

    certs = _make_certificates(tmp_path)
    keystore = tmp_path / "keystore.pem"  # ZooKeeper's PEM keystore: key, then certificate
    keystore.write_text(certs["server-key"].read_text() + certs["server"].read_text())
    with ZooKeeperEnsemble(tmp_path / "zk", tls=(keystore, certs["ca"])) as zk:
        common = {
            "datacenter": "dc1",
            "dsn": dsn,
            "zookeeper": zk.secure_hosts,
            "plugin_dirs": [str(EXAMPLES_DIR)],
            "cluster": cluster_name,
            **FAST_NODE,
        }
        node = NodeProcess(tmp_path / "nodes", "a", zookeeper_ca=str(certs["ca"]), **common)
        node.start()
        try:
            with Client(dsn) as client:
                task_id = client.submit("demo.tasks:add", plugin="demo", args=(3, 4))
                assert wait_state(client, task_id, TaskState.SUCCEEDED).result == 7
        finally:
            node.stop()
        # A node that trusts another CA does not accept the ensemble's certificate.
        impostor = NodeProcess(
            tmp_path / "nodes", "b", zookeeper_ca=str(certs["other-ca"]), **common
        )
        with pytest.raises(LabError, match="cannot reach ZooKeeper"):
            impostor.start(wait=40)
        impostor.stop()
