"""Where a cluster keeps its znodes. Every path the cluster uses is named here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterPaths:
    cluster: str

    @property
    def root(self) -> str:
        return "/taskman"  # shared by every cluster on the ensemble

    @property
    def base(self) -> str:
        return f"{self.root}/{self.cluster}"

    @property
    def nodes(self) -> str:
        return f"{self.base}/nodes"

    @property
    def claims(self) -> str:
        return f"{self.base}/claims"

    @property
    def token_base(self) -> str:
        # Added to every zxid the cluster uses as a token or epoch: raised once by
        # `taskman cluster rebase-tokens` after the ensemble was rebuilt (its zxids
        # restart low), so tokens keep growing across ensembles.
        return f"{self.base}/token_base"

    @property
    def sessions(self) -> str:
        # One ephemeral sequential marker per node session: its releases are
        # conditional on it, so they die with the session (lease.py).
        return f"{self.base}/sessions"

    @property
    def leader(self) -> str:
        return f"{self.base}/leader"

    @property
    def caps(self) -> str:
        # caps/<key>/<permit>: one ephemeral znode per attempt holding a concurrency permit
        return f"{self.base}/caps"

    @property
    def wake(self) -> str:
        # Set by whoever makes work due; every node watches it (wake.py). Anyone may
        # set it (not delete it): a wake-up carries no authority.
        return f"{self.base}/wake"

    @property
    def wake_addresses(self) -> str:
        # Nodes' UDP wake addresses (wake_datagrams.py), ephemeral; anyone may read them.
        return f"{self.base}/wake-addresses"

    def wake_address(self, node_id: str) -> str:
        return f"{self.wake_addresses}/{node_id}"

    @property
    def drain_requests(self) -> str:
        return f"{self.base}/drain"

    def drain(self, node_id: str) -> str:
        return f"{self.drain_requests}/{node_id}"

    def node(self, node_id: str) -> str:
        return f"{self.nodes}/{node_id}"

    def claim(self, task_id: int, attempt: int) -> str:
        # One znode per attempt: a reclaimed attempt's znode can never be mistaken
        # for (or deleted in place of) the next attempt's.
        return f"{self.claims}/{claim_name(task_id, attempt)}"

    def all(self) -> tuple[str, ...]:
        return (self.nodes, self.claims, self.sessions, self.leader, self.drain_requests, self.caps)


def claim_name(task_id: int, attempt: int) -> str:
    return f"{task_id}.{attempt}"
