//! Where blocking work (a disk sync, a store read, a batch of signatures) runs: tokio's
//! blocking pool, or, on a thread that runs a deterministic simulation, that thread itself.
//!
//! The chaos harness runs every simulated host's runtime on one thread and moves simulated
//! time in steps; work on the blocking pool would finish at a step that depends on the real
//! machine's speed, and the same seed would give another run. With [`set_inline`] on for the
//! thread, [`blocking`] runs the work where it is called: simulated time does not move while
//! it runs, so every run of a seed sees it finish at the same point.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Run blocking work on this thread from now on (`true`: a simulation's thread), or on the
/// blocking pool again (`false`).
pub fn set_inline(inline: bool) {
    INLINE.with(|cell| cell.set(inline));
}

/// Whether blocking work runs inline on this thread.
pub fn is_inline() -> bool {
    INLINE.with(Cell::get)
}

/// Run `work` on the blocking pool (or inline, see [`set_inline`]) and answer its result;
/// `Err` when the pool dropped it (the runtime is shutting down).
pub async fn blocking<F, R>(work: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if is_inline() {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_work_runs_on_the_calling_thread_and_pooled_work_does_not() {
        let here = std::thread::current().id();
        set_inline(true);
        let inline = blocking(move || std::thread::current().id()).await;
        set_inline(false);
        let pooled = blocking(move || std::thread::current().id()).await;
        assert_eq!(inline.ok(), Some(here));
        assert_ne!(pooled.ok(), Some(here));
    }
}
