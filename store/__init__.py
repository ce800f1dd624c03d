"""The layer store: content-addressed blobs, snapshots and images in an OCI layout.

It arrives with the store issue; `store` never imports `grammar` or `builder`.
"""
