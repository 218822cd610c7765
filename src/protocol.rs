//! Messages between the page and the inference worker, as JSON-shaped values (serde, tagged by `type`).

use serde::{Deserialize, Serialize};

use crate::selfcheck::SelfCheck;

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the GPU through burn and run the matmul self-check on it.
    SelfCheck {
        /// Side of the square matrices.
        size: usize,
    },
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker has loaded its wasm and accepts messages.
    Ready,
    /// Result of [`ToWorker::SelfCheck`].
    SelfCheck {
        /// What was computed and how far it was from the CPU.
        check: SelfCheck,
        /// Milliseconds from the request to the answer, GPU start-up included.
        millis: f64,
    },
    /// A request failed; `message` is meant for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let json = serde_json::to_string(&ToWorker::SelfCheck { size: 64 }).unwrap();
        assert_eq!(json, r#"{"type":"self_check","size":64}"#);
        let back: FromWorker = serde_json::from_str(r#"{"type":"error","message":"no GPU"}"#).unwrap();
        assert_eq!(back, FromWorker::Error { message: "no GPU".into() });
    }
}
