//! `ember bench …`: Ember's benchmarks, which the `ember` binary dispatches to. `invoke`
//! measures a running server or servers of its own (its cold-start table in `cold`, next to the
//! floors of `floor`, the crate's one module with `unsafe`: forks); `burst` and `sizing` start their own servers (`live`); `load`
//! holds a load on a running server or on one of its own; `provisioned` times provisioned
//! concurrency on a server of its own; `streaming` times streamed chunks and a 20 MiB stream's
//! memory on a server of its own; `vm` drives the Linux driver and the
//! agent directly, without a server; `egress` times a function's HTTP request to a world
//! namespace of its own (`world`) next to the host's, and VM creation with and without networking.
//! `invoke --backends` (`stores`) and `control` measure each store backend side by side
//! (`backends`: embedded, or PostgreSQL and S3, given or throwaway ones it starts).
//!
//! Like the binary, this crate reports errors with `anyhow`: a benchmark's failures are only
//! ever printed, once, at the top, never matched on by a caller.

#![deny(unsafe_code)]

mod backends;
mod burst;
mod cold;
mod control;
mod egress;
mod floor;
mod invoke;
mod live;
mod load;
mod provisioned;
mod sizing;
mod stores;
mod streaming;
mod vm;
mod world;

use ember_client::ClientArgs;

/// The benchmarks, as `ember bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Warm invoke latency and throughput, cold starts per runtime and memory size (with and
    /// without runtime templates, with --serve) next to their floors, and VM creation time.
    Invoke(invoke::InvokeBenchArgs),
    /// Cold-VM starts, latency and idle VM-seconds of a bursty load, without a warming pool,
    /// with a fixed one and with the adaptive one (starts its own servers; --simulate: none).
    Burst(burst::BurstBenchArgs),
    /// Automatic sizing end to end: an over-provisioned, an under-provisioned and a CPU-starved
    /// function, before and after sizing (starts its own server in `auto` sizing mode).
    Sizing(sizing::SizingBenchArgs),
    /// An open-loop load at a fixed rate held for a while: latency from each request's due
    /// time, errors, and the server's and agents' memory and descriptors at the start, middle
    /// and end (a running server, or with --serve one of its own).
    Load(load::LoadBenchArgs),
    /// VM creation and a container's cold start in a running VM, with the Linux driver and the
    /// agent's protocol directly: no server, no HTTP (root only).
    Vm(vm::VmBenchArgs),
    /// Provisioned concurrency: from the Put to READY for N environments of a Python function,
    /// over repeated runs, next to one cold start (starts its own server).
    Provisioned(provisioned::ProvisionedBenchArgs),
    /// Response streaming: the time from a function writing a chunk to the client reading it
    /// through InvokeWithResponseStream, and the server's and agent's memory during a 20 MiB
    /// stream (starts its own server).
    Streaming(streaming::StreamingBenchArgs),
    /// Network egress: a warm invocation making one HTTP request to a world namespace, at a
    /// fixed rate, next to the same request from the host, and VM creation with and without
    /// networking (starts its own server and world; root only).
    Egress(egress::EgressBenchArgs),
    /// Control-plane writes (CreateFunction, UpdateFunctionConfiguration, PublishVersion,
    /// PutFunctionConcurrency, TagResource, DeleteFunction) through SigV4 HTTP, p50 and p99 per
    /// store backend side by side (--backends embedded,postgres+s3; starts its own servers).
    Control(control::ControlBenchArgs),
}

/// Runs one benchmark; `client` says which server `invoke` measures (the others start their own).
pub async fn run(client: &ClientArgs, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Invoke(args) => invoke::invoke(client, args).await,
        BenchCommand::Burst(args) => burst::run(args).await,
        BenchCommand::Sizing(args) => sizing::run(args).await,
        BenchCommand::Load(args) => load::run(client, args).await,
        BenchCommand::Vm(args) => vm::run(args).await,
        BenchCommand::Provisioned(args) => provisioned::run(args).await,
        BenchCommand::Streaming(args) => streaming::run(args).await,
        BenchCommand::Egress(args) => egress::run(args).await,
        BenchCommand::Control(args) => control::run(args).await,
    }
}
