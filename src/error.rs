//! The one error type of the library: every failure a user can cause ends as one clear line.

/// Everything that can go wrong in the library, each with a message meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GPU or its driver refused or failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// Input that does not have the shape or content the operation needs.
    #[error("{0}")]
    Invalid(String),
    /// Reading a tensor back from the device failed.
    #[error("reading back from the device failed: {0}")]
    Readback(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
