//! What std lacks and every Ember crate wants (after rust-analyzer's `stdx`): small, std-only
//! helpers, with no dependency, so that any crate, host or guest, may use them without a new
//! edge in the crate graph.
//!
//! Today that is [`error_chain`], the one way Ember prints an error: the message and each of its
//! `source`s, once, on one line. Errors' own messages do not repeat their sources (house style),
//! so this is what shows the whole story, at the top, where the error is logged or answered.

#![forbid(unsafe_code)]

/// An error and its sources, `: `-separated, on one line: "a: b: c".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// An error whose message is `message` and whose source is `source`.
    #[derive(Debug)]
    struct Layer {
        message: &'static str,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|s| s as _)
        }
    }

    #[test]
    fn every_cause_is_named_once_in_order() {
        let io = Layer {
            message: "no space left on device",
            source: None,
        };
        let write = Layer {
            message: "cannot write the blob",
            source: Some(Box::new(io)),
        };
        let top = Layer {
            message: "cannot create the function",
            source: Some(Box::new(write)),
        };
        assert_eq!(
            error_chain(&top),
            "cannot create the function: cannot write the blob: no space left on device"
        );
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        let alone = Layer {
            message: "timed out",
            source: None,
        };
        assert_eq!(error_chain(&alone), "timed out");
    }
}
