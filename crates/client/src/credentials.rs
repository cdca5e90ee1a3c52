//! The AWS shared-credentials file Ember writes for its admin account, and the lookup of keys
//! the CLI signs with.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ClientError;

/// Keys to sign requests with.
#[derive(Debug, Clone)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Where a data dir keeps its credentials file.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials")
}

/// Writes `keys` as profile `default`, mode 0600, atomically.
pub fn write(path: &Path, keys: &Keys, region: &str) -> Result<(), ClientError> {
    let tmp = path.with_extension("tmp");
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| ClientError::WriteCredentials { path, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed(&tmp))?;
    write!(
        file,
        "# Ember admin account. Use with AWS_SHARED_CREDENTIALS_FILE={}\n\
         [default]\n\
         aws_access_key_id = {}\n\
         aws_secret_access_key = {}\n\
         region = {region}\n",
        path.display(),
        keys.access_key_id,
        keys.secret_access_key
    )
    .map_err(failed(&tmp))?;
    file.sync_all().map_err(failed(&tmp))?;
    std::fs::rename(&tmp, path).map_err(failed(path))?;
    Ok(())
}

/// Reads profile `profile` of a shared-credentials file.
pub fn read(path: &Path, profile: &str) -> Result<Keys, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::ReadCredentials {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, profile).ok_or_else(|| ClientError::NoProfile {
        path: path.to_owned(),
        profile: profile.to_owned(),
    })
}

/// The keys of profile `profile`, if it has both.
fn parse(text: &str, profile: &str) -> Option<Keys> {
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "aws_access_key_id" => id = Some(value.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some(Keys {
        access_key_id: id?,
        secret_access_key: secret?,
    })
}

/// The CLI's keys: the data dir's credentials file, or else the standard AWS variables.
pub fn find(data_dir: &Path) -> Result<Keys, ClientError> {
    let file = path_in(data_dir);
    if file.exists() {
        return read(&file, "default");
    }
    match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(access_key_id), Ok(secret_access_key)) => Ok(Keys {
            access_key_id,
            secret_access_key,
        }),
        _ => Err(ClientError::NoCredentials { path: file }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_file_the_parser_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let keys = Keys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "s3cr3t/+=".into(),
        };
        write(&path, &keys, "us-east-1").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read(&path, "default").unwrap();
        assert_eq!(back.access_key_id, "AKIAEXAMPLE");
        assert_eq!(back.secret_access_key, "s3cr3t/+=");
    }

    #[test]
    fn picks_the_named_profile() {
        let text = "[other]\naws_access_key_id=A\naws_secret_access_key=B\n\n[default]\n\
                    aws_access_key_id = C\naws_secret_access_key = D\n";
        let keys = parse(text, "default").unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.secret_access_key.as_str()),
            ("C", "D")
        );
        assert!(parse(text, "missing").is_none());
    }
}
