//! Long-running loops. Each is spawned on the app's task tracker and stops on its token.

mod sweeper;

pub use sweeper::{Sweeper, SweeperHandle};
