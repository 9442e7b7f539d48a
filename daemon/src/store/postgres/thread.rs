//! Where the store's work runs: a thread and runtime of its own, and the
//! name this member goes by in the database.

use crate::store::StoreError;

/// The store's runtime: one thread of its own, which drives every database
/// connection and the listener whatever the daemon's workers do. One
/// thread, not a pool of workers: it mostly waits, and fewer idle threads
/// leave the token path's wake-ups alone. It ends when the sender returned
/// is dropped (with the store: never blocking, even on an async worker);
/// the database rolls back any lock still held when its session ends.
pub(super) fn database_thread()
-> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError> {
    let cannot =
        |e: std::io::Error| StoreError::Database(format!("cannot start the database thread: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(cannot)?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("tokend-db".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(cannot)?;
    Ok((handle, stop))
}

/// The name this member goes by in the database: host, process and a
/// random part, so that two members never share it.
pub(super) fn member_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().chars().take(24).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "tokend:{host}:{}:{:02x}{:02x}{:02x}",
        std::process::id(),
        b[0],
        b[1],
        b[2]
    )
}
