"""Network namespaces on one bridge: one namespace per datacenter, so a partition is a real cut.

Topology (lab.md section 3): bridge ``tmbr<id>`` in the root namespace holds the
driver address ``10.77.<s>.254``; datacenter ``i`` is namespace ``tm<id>-dc<i>``
with ``eth0 = 10.77.<s>.<i>``. There is no default route anywhere, so nothing can
leave the machine. ``<s>`` is a /24 that no interface uses yet, so several labs
(and other engineers' labs) can run side by side.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from taskman.lab.servers import LabError

SUBNET_PREFIX = "10.77"
DRIVER_HOST = 254
_PARTITION_TABLE = "taskman_partition"


def _run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def require_netns() -> None:
    """Fail loudly (not skip) when this process cannot build namespaces."""
    if os.geteuid() != 0:
        raise LabError("the multi-datacenter lab needs root (network namespaces, nft)")
    for tool in ("ip", "nft"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            raise LabError(f"{tool} not found: run scripts/install-deps --servers")


def used_subnets() -> set[int]:
    """Third octets of 10.77.x.0/24 networks already on some interface of the root namespace."""
    used: set[int] = set()
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        for word in line.split():
            if word.startswith(SUBNET_PREFIX + "."):
                used.add(int(word.split(".")[2]))
    return used


@dataclass(frozen=True)
class LabNetwork:
    lab_id: str
    subnet: int  # the third octet
    datacenters: tuple[str, ...]

    @property
    def bridge(self) -> str:
        return f"tmbr{self.lab_id}"

    def namespace(self, dc: str) -> str:
        return f"tm{self.lab_id}-{dc}"

    def veth(self, dc: str) -> str:
        return f"tm{self.lab_id}{dc}"[:15]  # IFNAMSIZ

    def ip(self, dc: str) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{self.datacenters.index(dc) + 1}"

    @property
    def driver_ip(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{DRIVER_HOST}"

    def exec_prefix(self, dc: str) -> list[str]:
        # `ip netns exec` execs the command after setns: the PID we get is the server's.
        return ["ip", "netns", "exec", self.namespace(dc)]

    # -- lifecycle -------------------------------------------------------------

    def create(self) -> None:
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.driver_ip}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for dc in self.datacenters:
                ns, veth = self.namespace(dc), self.veth(dc)
                _run(["ip", "netns", "add", ns])
                _run(
                    ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]
                )
                _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{self.ip(dc)}/24", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Remove the namespaces (their veth ends go with them) and the bridge. Safe to repeat."""
        existing = set(_run(["ip", "netns", "list"], check=False).split())
        for dc in self.datacenters:
            if self.namespace(dc) in existing:
                _run(["ip", "netns", "del", self.namespace(dc)], check=False)
            _run(["ip", "link", "del", self.veth(dc)], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)

    def exists(self) -> bool:
        return self.namespace(self.datacenters[0]) in _run(["ip", "netns", "list"], check=False)

    # -- faults ----------------------------------------------------------------

    def partition(self, dc: str) -> None:
        """Cut ``dc`` off from the other datacenters; the driver (root namespace) still sees it.

        The rules live in the datacenter's own namespace, so they vanish with it.
        """
        others = ", ".join(self.ip(o) for o in self.datacenters if o != dc)
        rules = (
            f"table inet {_PARTITION_TABLE} {{\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {{ {others} }} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {{ {others} }} drop; }}\n"
            "}\n"
        )
        self.heal(dc)
        _run([*self.exec_prefix(dc), "nft", "-f", "-"], stdin=rules)

    def heal(self, dc: str) -> None:
        _run(
            [*self.exec_prefix(dc), "nft", "delete", "table", "inet", _PARTITION_TABLE], check=False
        )

    def partitioned(self, dc: str) -> bool:
        out = _run([*self.exec_prefix(dc), "nft", "list", "tables"], check=False)
        return _PARTITION_TABLE in out
