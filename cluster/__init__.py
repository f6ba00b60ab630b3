"""Cluster coordination (``taskman.cluster``): membership, claims and fencing tokens,
leader election, reclaim, and the node's main loop."""
