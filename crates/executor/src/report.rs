//! What an invocation looks like from outside: Lambda's START/END/REPORT log lines and the error
//! documents Lambda answers for failures the function itself did not report.

use std::fmt::Write as _;

use ember_protocol::{ExitStatus, InvokeOutcome, InvokeResult};

/// Error types Lambda uses for failures of the environment rather than of the function's code.
pub const TIMEOUT_ERROR: &str = "Sandbox.Timedout";
pub const OUT_OF_MEMORY_ERROR: &str = "Runtime.OutOfMemory";
pub const EXIT_ERROR: &str = "Runtime.ExitError";

/// The most of an invocation's log that `X-Amz-Log-Result` carries.
pub const LOG_TAIL_BYTES: usize = 4096;

/// How an invocation ended, as a caller of Invoke sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The function returned this payload.
    Ok,
    /// The function, its runtime or its environment failed; the payload is the error document
    /// and this its `errorType`.
    Unhandled { error_type: String },
}

/// The response payload and verdict for an agent's result.
pub fn verdict(result: &InvokeResult, timeout_s: u64) -> (Verdict, bytes::Bytes) {
    let request_id = &result.request_id;
    match &result.outcome {
        InvokeOutcome::Ok { payload } => (Verdict::Ok, payload.clone()),
        InvokeOutcome::FunctionError {
            error_type,
            payload,
        }
        | InvokeOutcome::InitError {
            error_type,
            payload,
        } => (
            Verdict::Unhandled {
                error_type: error_type.clone(),
            },
            payload.clone(),
        ),
        InvokeOutcome::Timeout => error_document(
            TIMEOUT_ERROR,
            format!("RequestId: {request_id} Error: Task timed out after {timeout_s}.00 seconds"),
        ),
        InvokeOutcome::OutOfMemory => error_document(
            OUT_OF_MEMORY_ERROR,
            format!("RequestId: {request_id} Error: Runtime exited with error: signal: killed"),
        ),
        InvokeOutcome::ExitError(status) => error_document(
            EXIT_ERROR,
            format!(
                "RequestId: {request_id} Error: Runtime exited with error: {}",
                describe_exit(*status)
            ),
        ),
    }
}

fn error_document(error_type: &str, message: String) -> (Verdict, bytes::Bytes) {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message });
    (
        Verdict::Unhandled {
            error_type: error_type.to_owned(),
        },
        bytes::Bytes::from(body.to_string()),
    )
}

/// `exit status 1` or `signal: killed`, as Lambda words it.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code, status.signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(9)) => "signal: killed".into(),
        (None, Some(signal)) => format!("signal: {signal}"),
        (None, None) => "exit status unknown".into(),
    }
}

/// The invocation's whole log: START, the function's output, END and REPORT.
pub fn log_text(
    result: &InvokeResult,
    version: &str,
    timeout_s: u64,
    verdict: &Verdict,
    start_rfc3339: &str,
) -> String {
    let id = &result.request_id;
    let mut log = String::with_capacity(result.logs.len() + 256);
    let _ = writeln!(log, "START RequestId: {id} Version: {version}");
    log.push_str(&result.logs);
    if !log.ends_with('\n') {
        log.push('\n');
    }
    if matches!(result.outcome, InvokeOutcome::Timeout) {
        let _ = writeln!(
            log,
            "{start_rfc3339} {id} Task timed out after {timeout_s}.00 seconds"
        );
    }
    let _ = writeln!(log, "END RequestId: {id}");
    let _ = write!(
        log,
        "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB\t",
        result.duration_ms,
        billed_ms(result.duration_ms),
        result.memory_limit_mb,
        result.max_memory_used_mb,
    );
    match (result.init_duration_ms, result.restored) {
        // A SnapStart environment, forked from its version's template: Lambda reports its
        // restore instead of an init.
        (Some(restore), true) => {
            let _ = write!(
                log,
                "Restore Duration: {restore:.2} ms\tBilled Restore Duration: {} ms\t",
                billed_ms(restore)
            );
        }
        (Some(init), false) => {
            let _ = write!(log, "Init Duration: {init:.2} ms\t");
        }
        (None, _) => {}
    }
    match (&result.outcome, verdict) {
        (InvokeOutcome::Timeout, _) => log.push_str("Status: timeout"),
        (
            InvokeOutcome::OutOfMemory
            | InvokeOutcome::ExitError(_)
            | InvokeOutcome::InitError { .. },
            Verdict::Unhandled { error_type },
        ) => {
            let _ = write!(log, "Status: error\tError Type: {error_type}");
        }
        _ => {}
    }
    log.push('\n');
    log
}

/// Lambda bills whole milliseconds, rounded up, and at least one.
pub fn billed_ms(duration_ms: f64) -> u64 {
    (duration_ms.ceil() as u64).max(1)
}

/// The last [`LOG_TAIL_BYTES`] of `log`, cut at a character boundary.
pub fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn result(outcome: InvokeOutcome, init: Option<f64>) -> InvokeResult {
        InvokeResult {
            request_id: "r-1".into(),
            outcome,
            init_duration_ms: init,
            restored: false,
            duration_ms: 1.234,
            memory_limit_mb: 128,
            max_memory_used_mb: 31,
            cpu_time_ms: 1.0,
            cpu_throttled_ms: 0.0,
            logs: "hello\n".into(),
        }
    }

    #[test]
    fn report_line_has_lambdas_fields() {
        let r = result(
            InvokeOutcome::Ok {
                payload: Bytes::from_static(b"{}"),
            },
            Some(80.5),
        );
        let (verdict, payload) = verdict(&r, 3);
        assert_eq!(verdict, Verdict::Ok);
        assert_eq!(payload, "{}");
        let log = log_text(&r, "$LATEST", 3, &verdict, "t");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "START RequestId: r-1 Version: $LATEST");
        assert_eq!(lines[1], "hello");
        assert_eq!(lines[2], "END RequestId: r-1");
        assert_eq!(
            lines[3],
            "REPORT RequestId: r-1\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\t\
             Max Memory Used: 31 MB\tInit Duration: 80.50 ms\t"
        );
    }

    #[test]
    fn a_restored_environment_reports_its_restore_instead_of_an_init() {
        let mut r = result(
            InvokeOutcome::Ok {
                payload: Bytes::from_static(b"{}"),
            },
            Some(12.3),
        );
        r.restored = true;
        let (verdict, _) = verdict(&r, 3);
        let log = log_text(&r, "3", 3, &verdict, "t");
        let report = log.lines().last().unwrap();
        assert_eq!(
            report,
            "REPORT RequestId: r-1\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\t\
             Max Memory Used: 31 MB\tRestore Duration: 12.30 ms\tBilled Restore Duration: 13 ms\t"
        );
        assert!(!log.contains("Init Duration"), "{log}");
    }

    #[test]
    fn environment_failures_become_lambdas_error_documents() {
        let cases = [
            (
                InvokeOutcome::Timeout,
                TIMEOUT_ERROR,
                "Task timed out after 3.00 seconds",
            ),
            (
                InvokeOutcome::OutOfMemory,
                OUT_OF_MEMORY_ERROR,
                "signal: killed",
            ),
            (
                InvokeOutcome::ExitError(ExitStatus {
                    code: Some(2),
                    signal: None,
                }),
                EXIT_ERROR,
                "exit status 2",
            ),
        ];
        for (outcome, error_type, message) in cases {
            let r = result(outcome, None);
            let (verdict, payload) = verdict(&r, 3);
            assert_eq!(
                verdict,
                Verdict::Unhandled {
                    error_type: error_type.into()
                }
            );
            let doc: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(doc["errorType"], error_type);
            let text = doc["errorMessage"].as_str().unwrap();
            assert!(
                text.starts_with("RequestId: r-1 Error: ") && text.contains(message),
                "{text}"
            );
            let log = log_text(&r, "$LATEST", 3, &verdict, "t");
            assert!(log.contains("Status: "), "{log}");
        }
    }

    #[test]
    fn tails_are_bounded_and_cut_on_characters() {
        let long = "é".repeat(5000);
        let t = tail(&long);
        assert!(t.len() <= LOG_TAIL_BYTES && t.len() >= LOG_TAIL_BYTES - 1);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(tail("short"), "short");
        assert_eq!(billed_ms(0.2), 1);
        assert_eq!(billed_ms(10.0), 10);
    }
}
