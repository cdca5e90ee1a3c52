//! The files in the data dir that say where a running server listens: `endpoint` (the API) and
//! `metrics-endpoint` (the separate metrics listener, if any), each one line, `http://ADDR:PORT`.
//! A script that starts `ember serve --listen 127.0.0.1:0` reads the port the kernel chose there.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The API's address, while the server listens.
pub const ENDPOINT: &str = "endpoint";
/// The separate metrics listener's address (`--metrics-listen`), while the server listens.
pub const METRICS_ENDPOINT: &str = "metrics-endpoint";

/// The URL written for a listener's address.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Removes the files a killed predecessor left, so that none of them names a port nobody listens
/// on any more. Call it with the data dir's lock held: the files belong to the lock's holder.
pub fn remove_stale(data_dir: &Path) -> anyhow::Result<()> {
    for name in [ENDPOINT, METRICS_ENDPOINT] {
        remove(&data_dir.join(name))?;
    }
    Ok(())
}

/// The endpoint files of a server that is listening; dropping it removes them, so that they
/// exist exactly while the server listens (a SIGKILLed server's stay until the next start).
#[derive(Debug)]
pub struct EndpointFiles {
    paths: Vec<PathBuf>,
}

impl EndpointFiles {
    /// Writes `metrics-endpoint` for `metrics`, if given, then `endpoint` for `api`: once
    /// `endpoint` exists, both do. Each file appears whole (written aside, then renamed), so a
    /// reader never sees half an address.
    pub fn write(
        data_dir: &Path,
        api: SocketAddr,
        metrics: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let mut files = Self { paths: Vec::new() };
        let listeners = [(METRICS_ENDPOINT, metrics), (ENDPOINT, Some(api))];
        for (name, addr) in listeners {
            let Some(addr) = addr else { continue };
            let path = data_dir.join(name);
            write_whole(&path, &format!("{}\n", url(addr)))?;
            files.paths.push(path);
        }
        Ok(files)
    }
}

impl Drop for EndpointFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(err) = remove(path) {
                tracing::warn!(error = format!("{err:#}"), "cannot remove an endpoint file");
            }
        }
    }
}

fn write_whole(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn the_files_name_the_listeners_while_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let metrics: SocketAddr = "[::1]:9100".parse().unwrap();
        let files = EndpointFiles::write(dir.path(), api, Some(metrics)).unwrap();
        assert_eq!(
            read(&dir.path().join(ENDPOINT)).as_deref(),
            Some("http://127.0.0.1:41234\n")
        );
        assert_eq!(
            read(&dir.path().join(METRICS_ENDPOINT)).as_deref(),
            Some("http://[::1]:9100\n")
        );
        drop(files);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn without_a_metrics_listener_there_is_no_metrics_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = EndpointFiles::write(dir.path(), "127.0.0.1:1".parse().unwrap(), None).unwrap();
        assert!(dir.path().join(ENDPOINT).exists());
        assert!(!dir.path().join(METRICS_ENDPOINT).exists());
        drop(files);
        assert!(!dir.path().join(ENDPOINT).exists());
    }

    #[test]
    fn stale_files_are_removed_and_missing_ones_are_no_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENDPOINT), "http://127.0.0.1:1\n").unwrap();
        std::fs::write(dir.path().join(METRICS_ENDPOINT), "http://127.0.0.1:2\n").unwrap();
        std::fs::write(dir.path().join("credentials"), "kept").unwrap();
        remove_stale(dir.path()).unwrap();
        remove_stale(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["credentials"]);
    }
}
