"""Reusable pytest contract suites for plugin authors.

Subclass one in your own tests and provide its fixture::

    from raydog_core.testing import TagStoreContract

    class TestMyStore(TagStoreContract):
        @pytest.fixture
        def make_store(self):
            stores = []
            def make(cluster_name):
                store = MyStore(cluster_name, url=...)
                store.connect(None)
                stores.append(store)
                return store
            yield make
            for store in stores:
                store.close()
"""

from raydog_core.testing.compute_contract import ComputeBackendContract
from raydog_core.testing.tag_store_contract import TagStoreContract

__all__ = ["ComputeBackendContract", "TagStoreContract"]
