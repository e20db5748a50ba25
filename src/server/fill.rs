//! Filling an INIT slot with a connection just opened: the one way a
//! connection enters the pool, for a worker's new connection and for
//! prefill alike.

use std::os::fd::AsFd;
use std::path::Path;

use super::ServerConnection;
use crate::auth::proof::AuthProof;
use crate::management::client::ManagementClient;
use crate::management::ManagementError;
use crate::pool;
use crate::segment::Segment;

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("server start-up messages ({0} bytes) do not fit in a slot")]
    StartupTooLarge(usize),
    #[error("handing the server socket to the supervisor: {0}")]
    Management(#[from] ManagementError),
    #[error("slot {0} was taken from us")]
    Lost(usize),
}

/// Records `conn` in slot `index` (INIT, held by `me`): its start-up
/// messages (as both its login and its current parameters), what the client proved, no prepared statements, its cancel
/// key, and a new generation; hands its socket to the supervisor (which
/// must hold it before the slot can ever be FREE) and publishes the slot
/// IN_USE by `me`. Returns the generation. On error the slot is still INIT
/// and the caller abandons it.
pub fn fill_slot(
    seg: &Segment,
    index: usize,
    me: i32,
    conn: &ServerConnection,
    proof: &AuthProof,
    management: &mut Option<ManagementClient>,
    management_path: &Path,
) -> Result<u64, FillError> {
    let slot = seg.slots().get(index).ok_or(FillError::Lost(index))?;
    if !slot.set_startup(&conn.startup) || !slot.set_login(&conn.startup) {
        return Err(FillError::StartupTooLarge(conn.startup.len()));
    }
    slot.set_proof(&proof.encode());
    // The slot may have held another connection: its statements are not
    // on this one.
    slot.clear_prepared();
    slot.set_backend(conn.backend_pid, conn.backend_key);
    let generation = slot.bump_generation();
    let mgmt = match management {
        Some(m) => m,
        None => management.insert(ManagementClient::connect(management_path)?),
    };
    if let Err(e) = mgmt.transfer(index, generation, conn.fd.as_fd()) {
        // A broken management connection is reopened next time.
        *management = None;
        return Err(e.into());
    }
    if !pool::publish_new(seg, index, me) {
        return Err(FillError::Lost(index));
    }
    Ok(generation)
}
