//! Values as the page store holds them: sealed under the tenant's DEK, or plain.
//!
//! With a DEK ([`crate::pagefs::data_key`]), every value leaves the compute sealed and
//! bound to what it is (which page of which inode, which record), and a directory entry's
//! key carries an HMAC of the name instead of the name. Without one, values go as they are.
//! These helpers are the only place that decides which, so the rest of the filesystem
//! deals in plain content.

use bytes::Bytes;
use fuser::Errno;

use super::PageFs;
use crate::pagefs::data_key::ValueKind;
use crate::pagefs::layout;

impl PageFs {
    /// A page as the page store holds it (sealed under the DEK, or plain), opened.
    pub(super) fn open_stored(&self, ino: u64, block: u64, stored: &[u8]) -> Result<Bytes, Errno> {
        match &self.keys {
            None => Ok(Bytes::copy_from_slice(stored)),
            Some(k) => k.open(ValueKind::Page { ino, block }, stored).map_err(|e| {
                tracing::error!(ino, block, error = %e,
                    "a page does not open under the tenant's key: failing the read with EIO");
                Errno::EIO
            }),
        }
    }

    /// A value (a page or an inode record) as the page store will hold it.
    pub(super) fn seal(&self, kind: ValueKind, plain: Bytes) -> Bytes {
        match &self.keys {
            None => plain,
            Some(k) => k.seal(kind, &plain),
        }
    }

    /// A directory entry's key and value (`None`: deleted) as the page store holds them.
    pub(super) fn dirent_entry(
        &self,
        parent: u64,
        name: &[u8],
        child: Option<u64>,
    ) -> (Bytes, Option<Bytes>) {
        match &self.keys {
            None => (
                layout::dirent_key(parent, name),
                child.map(layout::dirent_value),
            ),
            Some(k) => {
                let name_mac = k.name_mac(name);
                let value = child.map(|c| {
                    k.seal(
                        ValueKind::Dirent { parent, name_mac },
                        &layout::sealed_dirent_value(c, name),
                    )
                });
                (layout::dirent_key(parent, &name_mac), value)
            }
        }
    }
}
