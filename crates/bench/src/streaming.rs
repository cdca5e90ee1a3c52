//! `ember bench streaming`: response streaming, on a server of its own. A Rust function
//! (`tests/functions/rust-hello`, `lambda_runtime::streaming`) streams small chunks stamped with
//! the time it wrote them, read through `InvokeWithResponseStream` (AWS's event stream, decoded
//! here); the latency of each chunk is the time from its stamp to the client reading it (one
//! clock: function and client run on this host). Then a 20 MiB stream, while the server's and
//! its agents' resident memory is sampled every millisecond: the most either grows above what it
//! held before is what the stream cost them. In the same run, the floor: one write and read over
//! a loopback TCP connection in this process, the cheapest hop a chunk takes (it takes three:
//! runtime → agent, agent → server, server → client). Targets: a chunk reaches the client
//! within 2 ms at the median, and a 20 MiB stream holds at most a few MB (4 MiB) in the server
//! and in the agent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use crate::invoke::{percentile, recreate_with_timeout};
use crate::live::{self as bench_live, load_average, machine, pass_fail, Server};
use crate::load;
use ember_client::Client;

#[derive(Debug, clap::Args)]
pub struct StreamingBenchArgs {
    /// The Rust test function's zip [default: target/functions/rust-hello.zip, built by
    /// tests/functions/rust-hello/build.sh].
    #[arg(long)]
    rust_zip: Option<PathBuf>,
    /// Streamed invocations whose chunks are timed.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// Chunks per timed invocation.
    #[arg(long, default_value_t = 50)]
    chunks: u32,
    /// Time between two chunks, in ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u32,
    /// The function's memory, in MB: 1769 MB is one vCPU, so what is timed is the path, not the
    /// CPU quota of a small function (at 256 MB, 14% of a vCPU: a throttled period holds a
    /// chunk back by up to the rest of the 100 ms).
    #[arg(long, default_value_t = 1769)]
    memory_mb: u32,
    /// Runtime software directory for the server (the function needs none; shared with the
    /// other benchmarks).
    #[arg(long, default_value = "target/bench-runtimes")]
    runtime_dir: PathBuf,
    /// Where the server's log goes, as `server.log`.
    #[arg(long, default_value = "target/bench-streaming")]
    log_dir: PathBuf,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The latency target: a chunk reaches the client this long after it was written (p50).
const TARGET_LATENCY_MS: f64 = 2.0;
/// The memory target: a 20 MiB stream grows the server's and the agent's resident memory by at
/// most this much.
const TARGET_MEMORY_MB: f64 = 4.0;
/// The large stream: 20 chunks of 1 MiB less a little, 20 MiB with lambda_runtime's prelude.
const BIG_CHUNKS: u32 = 20;
const BIG_CHUNK_BYTES: u32 = (1 << 20) - 16;

const SERVE_ARGS: &[&str] = &["--container-keep-alive", "600", "--vm-keep-alive", "600"];

pub async fn run(args: StreamingBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs >= 1 && args.chunks >= 1,
        "--runs and --chunks must be at least 1"
    );
    let zip_path = args
        .rust_zip
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/functions/rust-hello.zip"));
    let zip = std::fs::read(&zip_path).with_context(|| {
        format!(
            "cannot read {} (build it with tests/functions/rust-hello/build.sh, or pass --rust-zip)",
            zip_path.display()
        )
    })?;
    let runtime_dir = bench_live::absolute(&args.runtime_dir)?;
    std::fs::create_dir_all(&runtime_dir)
        .with_context(|| format!("cannot create {}", runtime_dir.display()))?;
    let log = args.log_dir.join("server.log");
    let server = Server::start_this(SERVE_ARGS, &runtime_dir, &log).await?;
    let load_start = load_average();
    let measured = measure(&server, &args, &zip).await;
    let load_end = load_average();
    let stopped = server.stop().await;
    let m = measured?;
    stopped?;
    let floor = loopback_floor(1000).await?;

    let p50 = percentile(&m.latency_ms, 0.5);
    let latency_pass = p50 <= TARGET_LATENCY_MS;
    let memory_pass =
        m.server_growth_mb <= TARGET_MEMORY_MB && m.agent_growth_mb <= TARGET_MEMORY_MB;
    let command = format!("ember serve {}", SERVE_ARGS.join(" "));
    if args.json {
        let stats = |v: &[f64]| {
            json!({"p50": percentile(v, 0.5), "p90": percentile(v, 0.9),
                   "p99": percentile(v, 0.99), "max": percentile(v, 1.0)})
        };
        println!(
            "{}",
            json!({
                "machine": machine().to_json(),
                "server": command,
                "load_average_start": load_start,
                "load_average_end": load_end,
                "chunks": m.latency_ms.len(),
                "interval_ms": args.interval_ms,
                "memory_mb": args.memory_mb,
                "chunk_latency_ms": stats(&m.latency_ms),
                "first_chunk_latency_ms": stats(&m.first_ms),
                "floor_loopback_ms": stats(&floor),
                "big_stream": {
                    "bytes": m.big_bytes,
                    "seconds": m.big_s,
                    "server_rss_growth_mb": m.server_growth_mb,
                    "agent_rss_growth_mb": m.agent_growth_mb,
                    "first_server_rss_growth_mb": m.first_server_growth_mb,
                    "first_agent_rss_growth_mb": m.first_agent_growth_mb,
                },
                "target": {
                    "p50_chunk_latency_ms_at_most": TARGET_LATENCY_MS,
                    "rss_growth_mb_at_most": TARGET_MEMORY_MB,
                    "pass": latency_pass && memory_pass,
                },
            })
        );
        return Ok(());
    }
    let ms = |v: &[f64], p: f64| format!("{:.3}", percentile(v, p));
    println!("Machine: {}", machine().describe());
    println!(
        "Server: {command} (log {}); load average {} → {}",
        log.display(),
        load_start.map_or("?".to_owned(), |l| format!("{l:.2}")),
        load_end.map_or("?".to_owned(), |l| format!("{l:.2}")),
    );
    println!(
        "{} streamed invocations of {} chunks of 64 bytes, {} ms apart, by a {} MB function \
         (lambda_runtime::streaming), read with InvokeWithResponseStream.",
        args.runs, args.chunks, args.interval_ms, args.memory_mb
    );
    println!();
    println!(
        "  {:<44}  {:>7}  {:>7}  {:>7}  {:>7}",
        "ms", "p50", "p90", "p99", "max"
    );
    for (what, v) in [
        ("chunk written → read by the client", &m.latency_ms),
        ("  a stream's first chunk (behind the prelude)", &m.first_ms),
        ("floor: loopback TCP write → read", &floor),
    ] {
        println!(
            "  {what:<44}  {:>7}  {:>7}  {:>7}  {:>7}",
            ms(v, 0.5),
            ms(v, 0.9),
            ms(v, 0.99),
            ms(v, 1.0)
        );
    }
    println!();
    println!(
        "A {:.1} MiB stream in {:.2} s: resident memory grew by {:.1} MB in the server, {:.1} MB \
         in the VM's agent; the first such stream, by {:.1} MB and {:.1} MB (allocator caches \
         filling). A response held whole would grow both by 20 MiB or more each time.",
        m.big_bytes as f64 / f64::from(1 << 20),
        m.big_s,
        m.server_growth_mb,
        m.agent_growth_mb,
        m.first_server_growth_mb,
        m.first_agent_growth_mb
    );
    println!();
    println!(
        "Target: a chunk reaches the client within {TARGET_LATENCY_MS} ms (p50 {:.3} ms): {}",
        p50,
        pass_fail(latency_pass)
    );
    println!(
        "Target: a 20 MiB stream holds at most {TARGET_MEMORY_MB} MB in the server and the agent: {}",
        pass_fail(memory_pass)
    );
    Ok(())
}

struct Measured {
    /// Every chunk but each stream's first.
    latency_ms: Vec<f64>,
    /// Each stream's first chunk, which lambda_runtime writes right behind its prelude.
    first_ms: Vec<f64>,
    big_bytes: usize,
    big_s: f64,
    /// The second 20 MiB stream's growth of resident memory.
    server_growth_mb: f64,
    agent_growth_mb: f64,
    /// The first's (allocator caches included).
    first_server_growth_mb: f64,
    first_agent_growth_mb: f64,
}

async fn measure(
    server: &Server,
    args: &StreamingBenchArgs,
    zip: &[u8],
) -> anyhow::Result<Measured> {
    let client = server.admin_client(bench_live::http_client(Duration::from_secs(120))?)?;
    recreate_with_timeout(
        &client,
        "stream",
        "provided.al2023",
        "bootstrap",
        zip,
        args.memory_mb,
        60,
    )
    .await?;
    // Warm: the timed chunks are not a cold start's.
    invoke_stream(&client, 1, 8, 0).await?;
    let (mut latency_ms, mut first_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let read = invoke_stream(&client, args.chunks, 64, args.interval_ms).await?;
        anyhow::ensure!(
            read.stamps.len() == args.chunks as usize,
            "read {} of {} chunks",
            read.stamps.len(),
            args.chunks
        );
        let mut stamps = read.stamps.iter().map(|(written, at)| (at - written) * 1e3);
        first_ms.extend(stamps.next());
        latency_ms.extend(stamps);
    }

    let pid = server.pid().context("the server has no pid")?;
    // Twice: the first stream also fills the allocator's caches (what any traffic would); the
    // second shows what a stream holds once they are warm. A response held whole would grow
    // both by its size each time.
    let mut growth = Vec::new();
    let mut big = None;
    let mut big_s = 0.0;
    for _ in 0..2 {
        let watcher = Watcher::start(pid as i32);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = std::time::Instant::now();
        big = Some(invoke_stream(&client, BIG_CHUNKS, BIG_CHUNK_BYTES, 0).await?);
        big_s = start.elapsed().as_secs_f64();
        growth.push(watcher.stop());
    }
    let big = big.context("no big stream")?;
    let (first_server_kb, first_agent_kb) = growth[0];
    let (server_growth_kb, agent_growth_kb) = growth[1];
    anyhow::ensure!(
        big.stamps.len() == BIG_CHUNKS as usize,
        "the 20 MiB stream carried {} of {BIG_CHUNKS} chunks",
        big.stamps.len()
    );
    Ok(Measured {
        latency_ms,
        first_ms,
        big_bytes: big.bytes,
        big_s,
        server_growth_mb: server_growth_kb as f64 / 1024.0,
        agent_growth_mb: agent_growth_kb as f64 / 1024.0,
        first_server_growth_mb: first_server_kb as f64 / 1024.0,
        first_agent_growth_mb: first_agent_kb as f64 / 1024.0,
    })
}

/// What a streamed invocation delivered: each chunk's stamp and when it was read (epoch s),
/// and the payload bytes.
struct Read {
    stamps: Vec<(f64, f64)>,
    bytes: usize,
}

async fn invoke_stream(
    client: &Client,
    chunks: u32,
    bytes: u32,
    interval_ms: u32,
) -> anyhow::Result<Read> {
    let event = json!({"stream": {"chunks": chunks, "bytes": bytes, "interval_ms": interval_ms}});
    let mut response = client
        .stream(
            Method::POST,
            "/2021-11-15/functions/stream/response-streaming-invocations",
            &[("content-type", "application/json".to_owned())],
            serde_json::to_vec(&event)?,
        )
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "InvokeWithResponseStream answered {}",
        response.status()
    );
    let mut decoder = EventDecoder::default();
    let mut payload = Vec::new();
    let mut scanned = 0;
    let mut read = Read {
        stamps: Vec::new(),
        bytes: 0,
    };
    let mut complete = None;
    while let Some(data) = response.chunk().await.context("the stream broke")? {
        let at = now_s();
        decoder.buf.extend_from_slice(&data);
        while let Some((event_type, body)) = decoder.next()? {
            match event_type.as_str() {
                "PayloadChunk" => {
                    read.bytes += body.len();
                    payload.extend_from_slice(&body);
                    // The chunks' stamps: `<index> <epoch µs>\n` at the start of each chunk.
                    while let Some(end) = payload[scanned..].iter().position(|b| *b == b'\n') {
                        let line = &payload[scanned..scanned + end];
                        if let Some(written) = stamp(line) {
                            read.stamps.push((written, at));
                        }
                        scanned += end + 1;
                    }
                    if payload.len() > (2 << 20) {
                        payload.drain(..scanned);
                        scanned = 0;
                    }
                }
                "InvokeComplete" => complete = Some(body),
                other => anyhow::bail!("unexpected event {other}"),
            }
        }
    }
    let complete = complete.context("the stream ended without InvokeComplete")?;
    let complete: Value = serde_json::from_slice(&complete)?;
    anyhow::ensure!(
        complete.get("ErrorCode").is_none(),
        "the invocation failed: {complete}"
    );
    Ok(read)
}

/// `<index> <epoch µs>`, after the previous chunk's padding of dots (or, for the first,
/// lambda_runtime's prelude and its NUL bytes).
fn stamp(line: &[u8]) -> Option<f64> {
    let start = line.iter().rposition(|b| *b == 0 || *b == b'.');
    let line = &line[start.map_or(0, |i| i + 1)..];
    let text = std::str::from_utf8(line).ok()?;
    let (index, micros) = text.split_once(' ')?;
    index.parse::<u32>().ok()?;
    let micros: u64 = micros.trim_end_matches('.').parse().ok()?;
    Some(micros as f64 / 1e6)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Splits AWS's event stream into events: (`:event-type`, payload). Lengths are trusted (the
/// server's own encoder is checked against botocore by `ember-api`'s tests).
#[derive(Default)]
struct EventDecoder {
    buf: Vec<u8>,
}

impl EventDecoder {
    fn next(&mut self) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        if self.buf.len() < 12 {
            return Ok(None);
        }
        let be32 = |b: &[u8], at: usize| -> usize {
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
        };
        let total = be32(&self.buf, 0);
        let headers_len = be32(&self.buf, 4);
        anyhow::ensure!(total >= 16 + headers_len, "a malformed event");
        if self.buf.len() < total {
            return Ok(None);
        }
        let message: Vec<u8> = self.buf.drain(..total).collect();
        let mut event_type = String::new();
        let mut at = 12;
        while at < 12 + headers_len {
            let name_len = message[at] as usize;
            let name = &message[at + 1..at + 1 + name_len];
            at += 1 + name_len;
            anyhow::ensure!(message[at] == 7, "a header that is not a string");
            let len = u16::from_be_bytes([message[at + 1], message[at + 2]]) as usize;
            let value = &message[at + 3..at + 3 + len];
            at += 3 + len;
            if name == b":event-type" {
                event_type = String::from_utf8_lossy(value).into_owned();
            }
        }
        Ok(Some((event_type, message[at..total - 4].to_vec())))
    }
}

/// Samples the resident memory of the server and of its agents every millisecond, on a thread
/// of its own; reports the most each grew above its first sample.
struct Watcher {
    stop: Arc<AtomicBool>,
    server_peak: Arc<AtomicU64>,
    agents_peak: Arc<AtomicU64>,
    baseline: (u64, u64),
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(pid: i32) -> Self {
        let proc_root = Path::new("/proc");
        let baseline = (
            rss_kb(proc_root, pid).unwrap_or(0),
            agents_rss_kb(proc_root, pid),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let server_peak = Arc::new(AtomicU64::new(baseline.0));
        let agents_peak = Arc::new(AtomicU64::new(baseline.1));
        let thread = std::thread::spawn({
            let (stop, server_peak, agents_peak) =
                (stop.clone(), server_peak.clone(), agents_peak.clone());
            move || {
                let proc_root = Path::new("/proc");
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = rss_kb(proc_root, pid) {
                        server_peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    agents_peak.fetch_max(agents_rss_kb(proc_root, pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Self {
            stop,
            server_peak,
            agents_peak,
            baseline,
            thread,
        }
    }

    /// (server, agents) growth in kB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.server_peak
                .load(Ordering::Relaxed)
                .saturating_sub(self.baseline.0),
            self.agents_peak
                .load(Ordering::Relaxed)
                .saturating_sub(self.baseline.1),
        )
    }
}

fn rss_kb(proc_root: &Path, pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    load::rss_kb(&status)
}

/// The resident memory of the server's `ember-agent` children (one per VM), summed.
fn agents_rss_kb(proc_root: &Path, server: i32) -> u64 {
    load::agent_pids(proc_root, server)
        .into_iter()
        .map(|pid| rss_kb(proc_root, pid).unwrap_or(0))
        .sum()
}

/// The floor: `n` writes of 64 bytes over a loopback TCP connection, each timed from the
/// write to the read, in ms.
async fn loopback_floor(n: usize) -> anyhow::Result<Vec<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (mut writer, accepted) =
        tokio::try_join!(tokio::net::TcpStream::connect(addr), listener.accept())?;
    writer.set_nodelay(true)?;
    let mut reader = accepted.0;
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let start = std::time::Instant::now();
        writer.write_all(&[7u8; 64]).await?;
        reader.read_exact(&mut buf).await?;
        out.push(start.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_after_the_prelude() {
        assert_eq!(stamp(b"3 1700000000000000"), Some(1_700_000_000.0));
        assert_eq!(stamp(b"{\"a\":1}\0\0\0\0\0\0\0\x000 2000000"), Some(2.0));
        // Later lines start with the previous chunk's padding.
        assert_eq!(stamp(b"......1 3000000"), Some(3.0));
        assert_eq!(stamp(b"........"), None);
    }

    #[test]
    fn the_decoder_splits_events_across_reads() {
        // One PayloadChunk "hello" as ember-api encodes it (its golden bytes).
        let bytes = hex::decode(
            "0000006f0000005af5fe871f0b3a6576656e742d7479706507000c5061796c6f61644368756e6b0d3a\
             636f6e74656e742d747970650700186170706c69636174696f6e2f6f637465742d73747265616d0d3a\
             6d6573736167652d747970650700056576656e7468656c6c6f29e71260",
        )
        .unwrap();
        let mut decoder = EventDecoder::default();
        decoder.buf.extend_from_slice(&bytes[..50]);
        assert!(decoder.next().unwrap().is_none());
        decoder.buf.extend_from_slice(&bytes[50..]);
        decoder.buf.extend_from_slice(&bytes);
        for _ in 0..2 {
            let (event_type, payload) = decoder.next().unwrap().unwrap();
            assert_eq!(
                (event_type.as_str(), &payload[..]),
                ("PayloadChunk", &b"hello"[..])
            );
        }
        assert!(decoder.next().unwrap().is_none());
    }
}
