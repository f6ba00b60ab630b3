"""The fault-injection tier: real MariaDB and ZooKeeper, real nodes, faults nobody scripted.

Each test breaks something under a running node (killed statements, a frozen
database, a cut-off ZooKeeper follower, hostile task code) and then checks the
guarantees of ../shared/design/invariants.md: the node keeps serving, every
task ends terminal with its reason, nothing runs twice at once, nothing leaks.
The node fixtures are the integration tier's.
"""

from __future__ import annotations

from tests.integration.conftest import client, cluster_name, start_node, store_dsn

__all__ = ["client", "cluster_name", "start_node", "store_dsn"]
