"""The datastore: content-addressed artifact blobs and run/task records under one URL."""

from .records import Datastore
from .storage import Storage, default_datastore_url, open_storage

__all__ = ["Datastore", "Storage", "default_datastore_url", "open_storage"]
