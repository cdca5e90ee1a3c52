//! Writes the fuzz targets' seed corpora under `fuzz/seeds/<target>/`: real packages, signed
//! requests, protocol frames, Runtime API exchanges and Lambda request bodies, made by Ember's own
//! code (and by the test functions' zip tool). Run through `fuzz/write-seeds.sh`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use ember_protocol::{
    AgentMessage, AgentStats, CodeSource, Codec, ContainerCreated, CreateContainer, Event,
    ExitStatus, FunctionSpec, GoneReason, HostMessage, Invocation, Invoke, InvokeOutcome,
    InvokeResult, ProtocolVersion, PutCode, Reply, Request,
};
use ember_sigv4::Credentials;
use tokio_util::codec::Encoder;
use zip::write::SimpleFileOptions;

/// Must match `fuzz_targets/sigv4.rs`.
const ACCESS_KEY_ID: &str = "AKIDFUZZEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const NOW: i64 = 1_767_225_600;
/// Must match `fuzz_targets/runtime_api.rs`.
const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    package_zip(&root.join("package_zip"), &repo);
    agent_protocol(&root.join("agent_protocol"));
    sigv4(&root.join("sigv4"));
    runtime_api(&root.join("runtime_api"));
    api_shapes(&root.join("api_shapes"), &repo);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("seed dir");
    fs::write(dir.join(name), bytes).expect("seed file");
}

fn package_zip(dir: &Path, repo: &Path) {
    for function in ["python", "provided-py"] {
        let zip = ember_package::zip_dir(&repo.join("tests/functions").join(function))
            .expect("zip a test function");
        write(dir, &format!("zip_dir-{function}.zip"), &zip);
    }
    write(dir, "tree-with-symlink.zip", &small_tree());
    // Stored (not deflated), no Unix metadata.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("bootstrap", stored).expect("entry");
    zip.write_all(b"#!/bin/sh\necho hi\n").expect("write");
    write(
        dir,
        "stored.zip",
        &zip.finish().expect("finish").into_inner(),
    );
}

/// A directory, a nested executable, and a symlink into the package.
fn small_tree() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    zip.add_directory("lib/", options.unix_permissions(0o755))
        .expect("dir");
    zip.start_file("lib/util.py", options.unix_permissions(0o644))
        .expect("file");
    zip.write_all(b"def f():\n    return 1\n").expect("write");
    zip.start_file("bootstrap", options.unix_permissions(0o755))
        .expect("file");
    zip.write_all(b"#!/bin/sh\nexec python3 -m lib.util\n")
        .expect("write");
    zip.add_symlink("util.py", "lib/util.py", options)
        .expect("symlink");
    zip.finish().expect("finish").into_inner()
}

fn frames<M: serde::Serialize>(messages: Vec<M>) -> Vec<u8> {
    let mut codec = Codec::<M, M>::new();
    let mut buf = BytesMut::new();
    // The target reads its first byte as how the stream is cut: 3 bytes at a time.
    buf.extend_from_slice(&[2]);
    for m in messages {
        codec.encode(m, &mut buf).expect("encode");
    }
    buf.to_vec()
}

fn invocation() -> Invocation {
    Invocation {
        request_id: REQUEST_ID.to_owned(),
        payload: Bytes::from_static(br#"{"echo":"hi"}"#),
        deadline_ms: 1_767_225_603_000,
        invoked_function_arn: "arn:aws:lambda:us-east-1:123456789012:function:hello".to_owned(),
        trace_id: Some("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=0".to_owned()),
        client_context: Some(serde_json::json!({"custom": {"k": 1.5}, "env": {}})),
        cognito_identity: None,
    }
}

fn agent_protocol(dir: &Path) {
    let version = ProtocolVersion::CURRENT;
    let spec = FunctionSpec {
        name: "hello".into(),
        arn: "arn:aws:lambda:us-east-1:123456789012:function:hello".into(),
        version: "$LATEST".into(),
        handler: "app.handler".into(),
        runtime: "python3.12".into(),
        region: "us-east-1".into(),
        environment: BTreeMap::from([("GREETING".into(), "hi".into())]),
        memory_mb: 128,
        timeout_ms: 3000,
        ephemeral_storage_mb: 512,
        code: CodeSource::Stored {
            sha256: "ab".repeat(32),
        },
        layers: Vec::new(),
    };
    let host = vec![
        HostMessage::HelloAck {
            protocol_version: version,
        },
        HostMessage::Request {
            id: 1,
            request: Request::PutCode(PutCode {
                sha256: "ab".repeat(32),
                offset: 0,
                total_len: 4,
                chunk: Bytes::from_static(b"PK\x03\x04"),
            }),
        },
        HostMessage::Request {
            id: 2,
            request: Request::CreateContainer(CreateContainer {
                container_id: "c-1".into(),
                freeze_idle: true,
                function: spec.clone(),
                uid: 1000,
                gid: 1000,
                cpu_millis: 72,
                pids_max: 64,
            }),
        },
        HostMessage::Request {
            id: 3,
            request: Request::Invoke(Invoke {
                container_id: "c-1".into(),
                invocation: invocation(),
            }),
        },
        HostMessage::Request {
            id: 4,
            request: Request::DestroyContainer {
                container_id: "c-1".into(),
            },
        },
        HostMessage::Request {
            id: 5,
            request: Request::Stats,
        },
        HostMessage::Request {
            id: 6,
            request: Request::Shutdown,
        },
        HostMessage::Refused {
            reason: "protocol version 2.0 is incompatible with ours (1.0)".into(),
        },
    ];
    write(dir, "host-conversation", &frames(host));
    let mut dir_spec = spec;
    dir_spec.code = CodeSource::Directory {
        path: PathBuf::from("/var/lib/ember/code/ab"),
    };
    let create = HostMessage::Request {
        id: 7,
        request: Request::CreateContainer(CreateContainer {
            container_id: "c-2".into(),
            freeze_idle: false,
            function: dir_spec,
            uid: 1000,
            gid: 1000,
            cpu_millis: 1000,
            pids_max: 1024,
        }),
    };
    write(dir, "host-create-from-directory", &frames(vec![create]));

    let result = |outcome| InvokeResult {
        request_id: REQUEST_ID.into(),
        outcome,
        init_duration_ms: Some(112.25),
        duration_ms: 1.3187,
        memory_limit_mb: 128,
        max_memory_used_mb: 31,
        cpu_time_ms: 0.731,
        cpu_throttled_ms: 0.0,
        logs: "START\nhello\n".into(),
    };
    let agent = vec![
        AgentMessage::Hello {
            protocol_version: version,
            agent_version: "0.1.0".into(),
        },
        AgentMessage::Reply {
            id: 1,
            reply: Reply::CodeStored {
                sha256: "ab".repeat(32),
                complete: true,
            },
        },
        AgentMessage::Reply {
            id: 2,
            reply: Reply::ContainerCreated(ContainerCreated {
                container_id: "c-1".into(),
                runtime_api: "127.0.0.1:9001".into(),
            }),
        },
        AgentMessage::Reply {
            id: 3,
            reply: Reply::InvokeResult(result(InvokeOutcome::Ok {
                payload: Bytes::from_static(br#"{"echo":"hi"}"#),
            })),
        },
        AgentMessage::Reply {
            id: 4,
            reply: Reply::ContainerGone {
                container_id: "c-1".into(),
                reason: GoneReason::Destroyed,
            },
        },
        AgentMessage::Reply {
            id: 5,
            reply: Reply::Stats(AgentStats {
                containers: 1,
                invocations_in_flight: 0,
                memory_used_mb: 40,
            }),
        },
        AgentMessage::Reply {
            id: 6,
            reply: Reply::ShuttingDown,
        },
        AgentMessage::Reply {
            id: 8,
            reply: Reply::Error {
                message: "unknown container c-9".into(),
            },
        },
        AgentMessage::Event(Event::ContainerGone {
            container_id: "c-2".into(),
            reason: GoneReason::Exited(ExitStatus {
                code: Some(1),
                signal: None,
            }),
        }),
    ];
    write(dir, "agent-conversation", &frames(agent));
    let outcomes = vec![
        InvokeOutcome::FunctionError {
            error_type: "HelloFailure".into(),
            payload: Bytes::from_static(br#"{"errorMessage":"no","errorType":"HelloFailure"}"#),
        },
        InvokeOutcome::InitError {
            error_type: "Runtime.ImportModuleError".into(),
            payload: Bytes::from_static(b"{}"),
        },
        InvokeOutcome::Timeout,
        InvokeOutcome::OutOfMemory,
        InvokeOutcome::ExitError(ExitStatus {
            code: None,
            signal: Some(9),
        }),
    ];
    let replies = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| AgentMessage::Reply {
            id: 10 + i as u64,
            reply: Reply::InvokeResult(result(o)),
        })
        .collect();
    write(dir, "agent-invoke-outcomes", &frames(replies));
}

/// A request as the ember CLI and boto3 send it, signed at the fuzz target's clock, as raw HTTP.
fn signed(method: &str, target: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", "127.0.0.1:9000"),
        (
            "user-agent",
            "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux",
        ),
        ("content-length", &length),
    ];
    headers.extend_from_slice(extra);
    let req = ember_sigv4::Request {
        method,
        path,
        query,
        headers: &headers,
        body,
    };
    let creds = Credentials {
        access_key_id: ACCESS_KEY_ID,
        secret_access_key: SECRET,
    };
    let now = time::OffsetDateTime::from_unix_timestamp(NOW).expect("time");
    let added = ember_sigv4::sign(&req, &creds, "us-east-1", "lambda", now);
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for (n, v) in headers
        .iter()
        .copied()
        .chain(added.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn sigv4(dir: &Path) {
    write(
        dir,
        "list-functions",
        &signed("GET", "/2015-03-31/functions/", &[], b""),
    );
    write(
        dir,
        "list-functions-page",
        &signed(
            "GET",
            "/2015-03-31/functions/?Marker=abc%3D&MaxItems=10",
            &[],
            b"",
        ),
    );
    write(
        dir,
        "get-function-arn",
        &signed(
            "GET",
            "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Ahello?Qualifier=%24LATEST",
            &[],
            b"",
        ),
    );
    write(
        dir,
        "create-function",
        &signed(
            "POST",
            "/2015-03-31/functions",
            &[("content-type", "application/json"), ("x-amz-security-token-unused", "  a   b ")],
            br#"{"FunctionName":"hello","Runtime":"python3.12","Role":"arn:aws:iam::123456789012:role/r","Handler":"app.handler","Code":{"ZipFile":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#,
        ),
    );
    write(
        dir,
        "invoke-event",
        &signed(
            "POST",
            "/2015-03-31/functions/hello/invocations",
            &[
                ("x-amz-invocation-type", "Event"),
                ("x-amz-log-type", "None"),
            ],
            br#"{"echo": "hi"}"#,
        ),
    );
    write(
        dir,
        "delete-function",
        &signed("DELETE", "/2015-03-31/functions/hello", &[], b""),
    );
}

fn runtime_api(dir: &Path) {
    let next = "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUser-Agent: aws-lambda-python/3.12\r\n\r\n";
    let post = |path: &str, extra: &str, body: &str| {
        format!(
            "POST /2018-06-01/runtime/{path} HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let respond = post(
        &format!("invocation/{REQUEST_ID}/response"),
        "",
        r#"{"echo":"hi"}"#,
    );
    let error = post(
        &format!("invocation/{REQUEST_ID}/error"),
        "Lambda-Runtime-Function-Error-Type: Unhandled\r\nContent-Type: application/json\r\n",
        r#"{"errorMessage":"boom","errorType":"HelloFailure","stackTrace":[]}"#,
    );
    let init_error = post(
        "init/error",
        "Lambda-Runtime-Function-Error-Type: Runtime.ImportModuleError\r\n",
        r#"{"errorMessage":"Unable to import module 'app'","errorType":"Runtime.ImportModuleError"}"#,
    );
    write(dir, "next", next.as_bytes());
    write(dir, "next-respond", format!("{next}{respond}").as_bytes());
    write(
        dir,
        "next-respond-next",
        format!("{next}{respond}{next}").as_bytes(),
    );
    write(dir, "next-error", format!("{next}{error}").as_bytes());
    write(dir, "init-error", init_error.as_bytes());
    write(
        dir,
        "init-error-then-next",
        format!("{init_error}{next}").as_bytes(),
    );
    write(
        dir,
        "respond-before-next",
        format!("{respond}{next}{respond}").as_bytes(),
    );
    let chunked = format!(
        "POST /2018-06-01/runtime/invocation/{REQUEST_ID}/response HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    write(
        dir,
        "next-respond-chunked",
        format!("{next}{chunked}").as_bytes(),
    );
}

fn api_shapes(dir: &Path, repo: &Path) {
    let zip = ember_package::zip_dir(&repo.join("tests/functions/provided-py")).expect("zip");
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    let create = serde_json::json!({
        "FunctionName": "hello",
        "Runtime": "python3.12",
        "Role": "arn:aws:iam::123456789012:role/lambda-role",
        "Handler": "app.handler",
        "Code": {"ZipFile": zip},
        "Description": "a test function",
        "Timeout": 30,
        "MemorySize": 256,
        "Publish": false,
        "PackageType": "Zip",
        "Environment": {"Variables": {"GREETING": "hi", "LOG_LEVEL": "debug"}},
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 1024},
    });
    write(dir, "create-function.json", create.to_string().as_bytes());
    let minimal = serde_json::json!({
        "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:hello",
        "Runtime": "provided.al2023",
        "Role": "arn:aws:iam::123456789012:role/r",
        "Handler": "bootstrap",
        "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
    });
    write(
        dir,
        "create-function-arn.json",
        minimal.to_string().as_bytes(),
    );
    let unsupported = serde_json::json!({
        "FunctionName": "123456789012:function:hello:prod",
        "Layers": ["arn:aws:lambda:us-east-1:123456789012:layer:l:1"],
        "VpcConfig": {"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]},
        "Code": {"S3Bucket": "b", "S3Key": "k"},
        "Environment": {"Variables": {"AWS_REGION": "x", "1bad": "y"}},
        "Timeout": 0,
        "MemorySize": 20000,
    });
    write(
        dir,
        "create-function-refused.json",
        unsupported.to_string().as_bytes(),
    );
    let update = serde_json::json!({
        "Timeout": 10,
        "MemorySize": 512,
        "Handler": "app.other",
        "Runtime": "python3.13",
        "Description": "",
        "Environment": {"Variables": {}},
        "EphemeralStorage": {"Size": 10240},
        "RevisionId": "6d2a8f0e-5b43-4d6b-9d1e-6a2c1b0f4e11",
    });
    write(
        dir,
        "update-configuration.json",
        update.to_string().as_bytes(),
    );
    let code = serde_json::json!({"ZipFile": zip, "Architectures": ["x86_64"], "DryRun": false, "Publish": false});
    write(dir, "update-code.json", code.to_string().as_bytes());
    write(dir, "empty-body", b"");
}
