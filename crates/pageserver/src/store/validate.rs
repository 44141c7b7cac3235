//! Checks of keys and write batches against the page store's limits, before anything is
//! written.

use std::collections::HashSet;

use lakebed_pageserver_api::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};

use super::error::StoreError;

/// Refuses an empty key or one over [`MAX_KEY_BYTES`].
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument(
            "a key must not be empty".to_owned(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "a key of {} bytes: at most {MAX_KEY_BYTES} (MAX_KEY_BYTES)",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a write batch against the limits.
pub fn validate_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    puts: &[(K, V)],
    deletes: &[K],
) -> Result<(), StoreError> {
    let count = puts.len() + deletes.len();
    if count > MAX_BATCH_KEYS {
        return Err(StoreError::InvalidArgument(format!(
            "{count} keys in one write: at most {MAX_BATCH_KEYS} (MAX_BATCH_KEYS)"
        )));
    }
    let mut total = 0usize;
    let mut seen = HashSet::with_capacity(count);
    let keys = puts.iter().map(|(k, _)| k).chain(deletes);
    for key in keys {
        let key = key.as_ref();
        check_key(key)?;
        total += key.len();
        if !seen.insert(key) {
            return Err(StoreError::InvalidArgument(format!(
                "key {} appears more than once in one write",
                show_key(key)
            )));
        }
    }
    for (key, value) in puts {
        let len = value.as_ref().len();
        if len > MAX_VALUE_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "the value of key {} is {len} bytes: at most {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)",
                show_key(key.as_ref())
            )));
        }
        total += len;
    }
    if total > MAX_BATCH_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "a write of {total} bytes: at most {MAX_BATCH_BYTES} (MAX_BATCH_BYTES)"
        )));
    }
    Ok(())
}

/// A key for an error message: escaped, and cut after 64 bytes.
fn show_key(key: &[u8]) -> String {
    let shown: String = key
        .iter()
        .take(64)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if key.len() > 64 {
        format!("\"{shown}\"... ({} bytes)", key.len())
    } else {
        format!("\"{shown}\"")
    }
}
