"""Readers (folder, manifest, webdataset) and the shard sink; all paths go through apache_beam.io.filesystems."""
