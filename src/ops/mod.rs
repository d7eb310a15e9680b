//! Operations.

pub mod logging;
pub mod metrics;
pub mod shutdown;
