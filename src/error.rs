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
    /// A part of the model that no given file or folder provides; each front end says how to give it.
    #[error("the model has no {part}: add {file}, or a model folder with {folder_path}")]
    MissingPart {
        /// What is missing ("T5 tokenizer").
        part: String,
        /// The kind of file that would provide it ("a T5 GGUF, which carries its tokenizer").
        file: String,
        /// The CLI flag that takes that file (`--t5`).
        flag: String,
        /// Where a diffusers folder keeps it.
        folder_path: String,
    },
    /// An edit whose memory plan exceeds the GPU memory budget, refused before anything is uploaded.
    #[error(
        "a {}×{} edit needs {} of GPU memory ({phase}; {residency}), more than the budget of {}; {}",
        output.0, output.1, binary_size(*needed), binary_size(*budget),
        match advice.is_empty() { true => "nothing smaller fits either".to_string(), false => format!("what would fit: {}", advice.join("; ")) }
    )]
    OverBudget {
        /// Output width and height.
        output: (usize, usize),
        /// The plan's peak.
        needed: u64,
        /// The budget.
        budget: u64,
        /// The phase with that peak.
        phase: String,
        /// What the plan keeps on the device.
        residency: String,
        /// Each change that alone would fit.
        advice: Vec<String>,
    },
    /// Reading a tensor back from the device failed.
    #[error("reading back from the device failed: {0}")]
    Readback(String),
}

impl Error {
    /// Whether the device itself failed (lost, reset, out of memory during a readback) rather than the input:
    /// the GPU state cannot be trusted any more and the device must be opened again.
    pub fn is_device_failure(&self) -> bool {
        matches!(self, Self::Readback(_))
    }
}

/// Bytes in MiB or GiB with two decimals.
pub fn binary_size(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64),
        false => format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_failures_ask_for_a_fresh_device() {
        assert!(Error::Readback("Device lost".into()).is_device_failure());
        assert!(!Error::Invalid("the image is empty".into()).is_device_failure());
        assert!(!Error::Gpu("no usable GPU adapter".into()).is_device_failure());
    }
}
