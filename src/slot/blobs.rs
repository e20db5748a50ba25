//! The plain bytes of a slot: the start-up messages replayed to clients
//! (current and as at login, see the module documentation of `slot`) and
//! the authentication proof of the client that opened the connection.

use std::cell::UnsafeCell;

use super::Slot;

/// Room for the server's ParameterStatus and BackendKeyData messages, which
/// are replayed to every client that is given this connection.
pub const STARTUP_CAPACITY: usize = 4096;
/// Room for an encoded authentication proof.
pub const PROOF_CAPACITY: usize = 48;

#[repr(C)]
struct Bytes<const N: usize> {
    len: u32,
    /// Bumped by every `set`: an owner that remembers the count it last
    /// saw knows, without reading the bytes, whether anyone wrote them
    /// since. Only the count's equality means anything (it wraps).
    changes: u32,
    bytes: [u8; N],
}

/// Up to `N` bytes written and read only by the slot's owner, so plain
/// bytes rather than atomics: a later owner reads them after the acquire
/// swap that made it owner, which orders the read after the last owner's
/// writes and its release swap.
#[repr(transparent)]
pub(super) struct OwnerBlob<const N: usize>(UnsafeCell<Bytes<N>>);

// SAFETY: the bytes are shared between processes (and so, as far as the
// compiler knows, between threads) but never accessed by two at once: only
// the process whose pid is in the slot's state word calls `set` or `get`
// (the owner rule in the module documentation), and ownership passes only
// through an acquire/release compare-and-swap of that word, which orders
// every access of one owner before every access of the next.
unsafe impl<const N: usize> Sync for OwnerBlob<N> {}

impl<const N: usize> OwnerBlob<N> {
    /// Empty: what a zeroed segment holds.
    pub(super) const fn empty() -> Self {
        OwnerBlob(UnsafeCell::new(Bytes {
            len: 0,
            changes: 0,
            bytes: [0; N],
        }))
    }

    /// False, leaving the blob as it was, when `bytes` do not fit.
    fn set(&self, bytes: &[u8]) -> bool {
        if bytes.len() > N {
            return false;
        }
        // SAFETY: the caller is the slot's owner (see the `Sync` impl), the
        // only process that may touch the blob now; within it, `get` hands
        // out copies, never a borrow of the bytes, so this is the only one.
        let blob = unsafe { &mut *self.0.get() };
        blob.bytes[..bytes.len()].copy_from_slice(bytes);
        blob.len = bytes.len() as u32;
        blob.changes = blob.changes.wrapping_add(1);
        true
    }

    /// How many times the bytes were set (wrapping).
    fn changes(&self) -> u32 {
        // SAFETY: as in `get`: read by the owner, no borrow outlives this.
        unsafe { (*self.0.get()).changes }
    }

    /// A copy: a borrow of the bytes could outlive a later `set` by the
    /// same owner, which would alias them.
    fn get(&self) -> Vec<u8> {
        // SAFETY: read by the owner after the acquire swap that made it
        // owner (see the `Sync` impl), so no other process writes it now,
        // and the borrow ends within this function, before any `set`. The
        // length is clamped, so a corrupt value cannot read out of bounds.
        let blob = unsafe { &*self.0.get() };
        blob.bytes[..(blob.len as usize).min(N)].to_vec()
    }

    /// A copy on the stack, for small blobs read on every attach and
    /// check-in, where an allocation would cost more than the bytes.
    fn get_small(&self) -> SmallCopy<N> {
        // SAFETY: as in `get`: read by the owner, borrow ends here.
        let blob = unsafe { &*self.0.get() };
        let len = (blob.len as usize).min(N);
        SmallCopy {
            len,
            bytes: blob.bytes,
        }
    }
}

/// A blob's bytes copied by value.
pub struct SmallCopy<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> std::ops::Deref for SmallCopy<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Slot {
    /// Stores the connection's current start-up messages (parameters as
    /// they are now) for replay. Owner only. Returns false when they do
    /// not fit.
    pub fn set_startup(&self, bytes: &[u8]) -> bool {
        self.startup.set(bytes)
    }

    /// Stores the parameters the server reported at login; only
    /// `server::fill_slot` calls this. Owner only. False when too large.
    pub fn set_login(&self, bytes: &[u8]) -> bool {
        self.login.set(bytes)
    }

    /// Stores the authentication proof. Owner only; false if too large.
    pub fn set_proof(&self, bytes: &[u8]) -> bool {
        self.proof.set(bytes)
    }

    /// The authentication proof. Owner only.
    pub fn proof(&self) -> SmallCopy<PROOF_CAPACITY> {
        self.proof.get_small()
    }

    /// The connection's current start-up messages. Owner only.
    pub fn startup(&self) -> Vec<u8> {
        self.startup.get()
    }

    /// Changes whenever the current start-up messages are set: with the
    /// generation, it tells an owner whether the connection's parameters
    /// are still the ones it last saw. Owner only.
    pub fn startup_changes(&self) -> u32 {
        self.startup.changes()
    }

    /// The start-up messages as the server sent them at login. Owner only.
    pub fn login(&self) -> Vec<u8> {
        self.login.get()
    }
}
