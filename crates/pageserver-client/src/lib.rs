//! The compute side of the page store (issue 4): the RPC client and pagefs, the FUSE
//! filesystem each compute's PGDATA is mounted on, with its local cache sealed under a
//! per-boot key. Not built yet; a placeholder.
