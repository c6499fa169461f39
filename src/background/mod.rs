//! Long-running loops. Each is spawned on the app's task tracker and stops on its token.

mod queue_depths;
mod readiness;
mod sweeper;

pub use queue_depths::refresh_queue_depths;
pub use readiness::keep_ready;
pub use sweeper::{Sweeper, SweeperHandle};
