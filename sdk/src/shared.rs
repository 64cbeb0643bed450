//! Shared data: a key-value store shared by every instance of the filter in the proxy, with
//! compare-and-swap so that concurrent instances never lose an update.

use crate::host;
use crate::{Error, Result};

/// A value's version, to hand back to [`set`] so that it only writes if nobody else did since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cas(pub u32);

/// The value at `key` and its version; `None` when there is none.
pub fn get(key: &str) -> Result<Option<(Vec<u8>, Cas)>> {
    let (value, cas) = host::get_shared_data(key)?;
    Ok(value.map(|v| (v, Cas(cas))))
}

/// Writes `value` at `key`. With `Some(cas)`, only if the value is still at that version:
/// otherwise [`Error::CasMismatch`]. With `None`, unconditionally.
pub fn set(key: &str, value: &[u8], cas: Option<Cas>) -> Result<()> {
    host::set_shared_data(key, value, cas.map_or(0, |c| c.0))
}

/// Reads, changes and writes `key` until the write wins (at most `attempts` times): `change`
/// gets the current value (if any) and returns the new one and a result to hand back.
pub fn update<T>(key: &str, attempts: u32, mut change: impl FnMut(Option<&[u8]>) -> (Vec<u8>, T)) -> Result<T> {
    for _ in 0..attempts.max(1) {
        let current = get(key)?;
        let (value, cas) = match &current {
            Some((bytes, cas)) => (Some(bytes.as_slice()), Some(*cas)),
            None => (None, None),
        };
        let (new, result) = change(value);
        // A key never written has no version to compare with; 0 asks for no check, so two
        // first writers may race once, which is the host's documented behaviour.
        match set(key, &new, cas) {
            Ok(()) => return Ok(result),
            Err(Error::CasMismatch) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(Error::CasMismatch)
}
