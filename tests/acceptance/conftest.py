from tests.integration.conftest import client, cluster_name, start_node

__all__ = ["client", "cluster_name", "start_node"]
