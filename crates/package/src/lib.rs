//! Code packages: validating uploaded function zips against hostile input, extracting them safely
//! and building them from a directory tree.
//!
//! Every entry point parses the zip the same way (`scan`): size and entry limits, entry paths,
//! entry kinds, declared sizes, non-overlapping entry data and symlink targets are all checked
//! before any entry is decompressed, and decompression stops one byte past an entry's declared
//! size. The total work is therefore bounded by `max_unzipped_bytes` plus a small multiple of the
//! zipped size, whatever the zip claims.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use zip::read::ZipFile;
use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, HasZipMetadata, ZipArchive, ZipWriter};

/// Longest symlink target accepted (Linux `PATH_MAX` less the terminating NUL).
const MAX_TARGET: u64 = 4095;
/// Longest path component (Linux `NAME_MAX`).
const MAX_COMPONENT: usize = 255;
/// Longest entry name, leaving room under `PATH_MAX` for the destination directory.
const MAX_NAME: usize = 3072;
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// `ZipFileData::system` value of archives made on Unix (APPNOTE 4.4.2.2).
const SYSTEM_UNIX: u8 = 3;

/// Size limits applied to an uploaded package.
#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    /// Largest accepted zip, in bytes.
    pub max_zipped_bytes: u64,
    /// Largest accepted sum of the entries' uncompressed sizes, in bytes.
    pub max_unzipped_bytes: u64,
    /// Largest accepted number of entries (files, directories and symlinks).
    pub max_entries: usize,
}

impl Default for PackageLimits {
    /// AWS Lambda's limits: 50 MB zipped, 250 MB unzipped; and at most 20,000 entries.
    fn default() -> Self {
        Self {
            max_zipped_bytes: 52_428_800,
            max_unzipped_bytes: 262_144_000,
            max_entries: 20_000,
        }
    }
}

/// What a valid package is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// SHA-256 of the zip bytes.
    pub sha256: [u8; 32],
    /// Size of the zip.
    pub zipped_bytes: u64,
    /// Sum of the entries' uncompressed sizes.
    pub unzipped_bytes: u64,
    /// Number of entries.
    pub entries: usize,
}

impl PackageInfo {
    /// The digest as AWS reports it in `CodeSha256`: base64 of the raw digest.
    pub fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256)
    }

    /// The digest in lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Why a package was refused or could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The upload is empty, or the zip (or directory) has no entries.
    #[error("Uploaded file must be a non-empty zip file.")]
    Empty,
    /// The bytes are not a zip this module can read.
    #[error("Could not unzip uploaded file. Please check your file, then try to upload again.")]
    NotAZip(#[source] ZipError),
    /// The zip's structure is inconsistent (overlapping entries, duplicates, ...).
    #[error(
        "Could not unzip uploaded file ({0}). Please check your file, then try to upload again."
    )]
    Malformed(String),
    /// An entry's data could not be decompressed (bad data, checksum mismatch).
    #[error("Could not unzip entry {entry:?} of uploaded file. Please check your file, then try to upload again.")]
    Corrupt {
        /// The entry's name.
        entry: String,
        /// What the decompressor reported.
        #[source]
        source: io::Error,
    },
    /// The zip is larger than `max_zipped_bytes`.
    #[error("Zipped size must be smaller than {limit} bytes")]
    TooLarge {
        /// Size of the upload.
        size: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The entries add up to more than `max_unzipped_bytes`.
    #[error("Unzipped size must be smaller than {limit} bytes")]
    UnzippedTooLarge {
        /// The limit exceeded.
        limit: u64,
    },
    /// The zip has more than `max_entries` entries.
    #[error("Zip file must contain at most {limit} entries")]
    TooManyEntries {
        /// The limit exceeded.
        limit: usize,
    },
    /// An entry's name is absolute, climbs out of the root, is too long or passes through a
    /// non-directory entry.
    #[error("Zip entry {0:?} has an unsafe path")]
    UnsafePath(String),
    /// A symlink's target is absolute, escapes the root or is not a plain relative path.
    #[error("Symlink {0} has an unsafe target")]
    UnsafeSymlink(String),
    /// Two entries have the same path, as written or once normalised (`a` and `./a`); holds the
    /// (normalised) path.
    #[error("Zip file has more than one entry for {0:?}")]
    DuplicateEntry(String),
    /// An entry is neither a regular file, a directory nor a symlink.
    #[error("{0:?} is not a regular file, directory or symlink")]
    Unsupported(String),
    /// An entry decompresses to a size other than the one it declares.
    #[error("Zip entry {0:?} does not match its declared size")]
    SizeMismatch(String),
    /// Writing a zip failed.
    #[error("Could not build zip file")]
    ZipWrite(#[source] ZipError),
    /// A filesystem operation failed (only `extract` and `zip_dir` touch the filesystem).
    #[error("Code package I/O failed")]
    Io(#[source] io::Error),
}

impl PackageError {
    /// True only for the zipped-size limit (HTTP 413 `RequestTooLargeException`).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// Validates a zip completely without writing anything; see the module docs for what is checked.
pub fn inspect(bytes: &[u8], limits: &PackageLimits) -> Result<PackageInfo, PackageError> {
    let mut scan = scan(bytes, limits)?;
    for entry in scan.entries.iter().filter(|e| e.kind == Kind::File) {
        let mut file = scan
            .archive
            .by_index(entry.index)
            .map_err(PackageError::NotAZip)?;
        copy_entry(&mut file, entry, &mut io::sink())?;
    }
    Ok(scan.info)
}

/// Extracts a zip into `dest`, an existing empty directory: files with their Unix permission bits
/// (0o644 when the zip has none), directories (0o755 when none; the owner always keeps rwx so the
/// tree stays removable) and safe symlinks. The zip is fully re-validated first; a failure while
/// writing leaves a partial tree that the caller should discard.
pub fn extract(
    bytes: &[u8],
    dest: &Path,
    limits: &PackageLimits,
) -> Result<PackageInfo, PackageError> {
    if fs::read_dir(dest)
        .map_err(PackageError::Io)?
        .next()
        .is_some()
    {
        let err = io::Error::new(io::ErrorKind::AlreadyExists, "destination is not empty");
        return Err(PackageError::Io(err));
    }
    let mut scan = scan(bytes, limits)?;
    let mut dirs = Vec::new();
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o755);
    for entry in &scan.entries {
        let path = dest.join(&entry.path);
        if let Some(parent) = path.parent() {
            builder.create(parent).map_err(PackageError::Io)?;
        }
        match (&entry.kind, &entry.target) {
            (Kind::Dir, _) => {
                builder.create(&path).map_err(PackageError::Io)?;
                dirs.push((path, entry.mode.unwrap_or(0o755) | 0o700));
            }
            (Kind::Symlink, Some(target)) => {
                std::os::unix::fs::symlink(target, &path).map_err(PackageError::Io)?;
            }
            (Kind::Symlink, None) => return Err(PackageError::UnsafeSymlink(show(&entry.path))),
            (Kind::File, _) => {
                // create_new refuses to follow or replace anything already at `path`.
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(PackageError::Io)?;
                let mut file = scan
                    .archive
                    .by_index(entry.index)
                    .map_err(PackageError::NotAZip)?;
                copy_entry(&mut file, entry, &mut out)?;
                let mode = Permissions::from_mode(entry.mode.unwrap_or(0o644));
                out.set_permissions(mode).map_err(PackageError::Io)?;
            }
        }
    }
    // Deepest first, so that restricting a parent never blocks fixing up a child.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, mode) in dirs {
        fs::set_permissions(path, Permissions::from_mode(mode)).map_err(PackageError::Io)?;
    }
    Ok(scan.info)
}

/// Builds a deflated zip of the tree under `dir`: entries sorted by name, '/'-separated relative
/// names, Unix permissions kept, symlinks stored as symlinks, fixed timestamps (so the same tree
/// always gives the same bytes). Refuses anything `inspect` would refuse, and an empty tree.
pub fn zip_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut items = Vec::new();
    collect(dir, "", &mut items)?;
    if items.is_empty() {
        return Err(PackageError::Empty);
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let base = SimpleFileOptions::default().last_modified_time(DateTime::default());
    for (name, path, meta) in items {
        let perms = meta.permissions().mode() & 0o777;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            zip.add_directory(name, base.unix_permissions(perms))
                .map_err(PackageError::ZipWrite)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(PackageError::Io)?;
            let shown = || format!("{} -> {}", show(&name), show(&target.to_string_lossy()));
            let target = target
                .to_str()
                .ok_or_else(|| PackageError::UnsafeSymlink(shown()))?;
            check_target(&name, target)?;
            zip.add_symlink(name, target, base)
                .map_err(PackageError::ZipWrite)?;
        } else if file_type.is_file() {
            let options = base
                .compression_method(CompressionMethod::Deflated)
                .unix_permissions(perms)
                .large_file(meta.len() >= u64::from(u32::MAX));
            zip.start_file(name, options)
                .map_err(PackageError::ZipWrite)?;
            let mut file = fs::File::open(&path).map_err(PackageError::Io)?;
            io::copy(&mut file, &mut zip).map_err(PackageError::Io)?;
        } else {
            return Err(PackageError::Unsupported(show(&name)));
        }
    }
    Ok(zip.finish().map_err(PackageError::ZipWrite)?.into_inner())
}

/// Adds everything under `dir` to `out` as (zip name, path, metadata); directories end in '/'.
fn collect(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf, fs::Metadata)>,
) -> Result<(), PackageError> {
    for entry in fs::read_dir(dir).map_err(PackageError::Io)? {
        let entry = entry.map_err(PackageError::Io)?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(PackageError::UnsafePath(show(&file_name.to_string_lossy())));
        };
        let name = format!("{prefix}{file_name}");
        if check_name(name.as_bytes(), &name)? != name {
            return Err(PackageError::UnsafePath(show(&name)));
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(PackageError::Io)?;
        if meta.is_dir() {
            let name = name + "/";
            collect(&path, &name, out)?;
            out.push((name, path, meta));
        } else {
            out.push((name, path, meta));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// One checked entry of a scanned zip.
struct Entry {
    index: usize,
    /// Normalised relative path: non-empty `/`-joined components, none of them `.` or `..`.
    path: String,
    kind: Kind,
    size: u64,
    /// Permission bits, when the zip was made on Unix and records some.
    mode: Option<u32>,
    /// A symlink's checked target.
    target: Option<String>,
}

/// A parsed zip whose metadata passed every check; only file contents remain unread.
struct Scan<'a> {
    archive: ZipArchive<Budgeted<'a>>,
    entries: Vec<Entry>,
    info: PackageInfo,
}

fn scan<'a>(bytes: &'a [u8], limits: &PackageLimits) -> Result<Scan<'a>, PackageError> {
    let zipped = bytes.len() as u64;
    if zipped == 0 {
        return Err(PackageError::Empty);
    }
    if zipped > limits.max_zipped_bytes {
        return Err(PackageError::TooLarge {
            size: zipped,
            limit: limits.max_zipped_bytes,
        });
    }
    // A legitimate zip is read about once (central directory, local headers, data). The budget
    // stops crafted input from making the parser retry candidate directories quadratically.
    let budget = zipped.saturating_mul(4).saturating_add(1 << 20);
    let reader = Budgeted {
        inner: Cursor::new(bytes),
        left: budget,
    };
    let mut archive = ZipArchive::new(reader).map_err(PackageError::NotAZip)?;
    if archive.is_empty() {
        return Err(PackageError::Empty);
    }
    if archive.len() > limits.max_entries {
        return Err(PackageError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    check_directory_names(
        bytes,
        archive.central_directory_start(),
        archive.len(),
        limits,
    )?;
    let mut entries = Vec::with_capacity(archive.len());
    let mut spans = Vec::with_capacity(archive.len());
    let mut unzipped = 0u64;
    for index in 0..archive.len() {
        let file = archive.by_index(index).map_err(PackageError::NotAZip)?;
        if file.enclosed_name().is_none() {
            return Err(PackageError::UnsafePath(show(file.name())));
        }
        let path = check_name(file.name_raw(), file.name())?;
        let size = file.size();
        unzipped = unzipped.saturating_add(size);
        if unzipped > limits.max_unzipped_bytes {
            return Err(PackageError::UnzippedTooLarge {
                limit: limits.max_unzipped_bytes,
            });
        }
        let end = file
            .data_start()
            .checked_add(file.compressed_size())
            .filter(|&end| end <= zipped);
        let end = end.ok_or_else(|| {
            PackageError::Malformed(format!("entry {:?} is truncated", show(&path)))
        })?;
        spans.push((file.header_start(), end, index));
        let file_type = file.unix_mode().map_or(0, |mode| mode & S_IFMT);
        let kind = match file_type {
            _ if file.name().ends_with('/') || file_type == S_IFDIR => Kind::Dir,
            0 | S_IFREG => Kind::File,
            S_IFLNK => Kind::Symlink,
            _ => return Err(PackageError::Unsupported(show(&path))),
        };
        if kind == Kind::Dir && size != 0 {
            return Err(PackageError::Malformed(format!(
                "directory {:?} has content",
                show(&path)
            )));
        }
        let unix = file.get_metadata().system as u8 == SYSTEM_UNIX;
        let mode = file
            .unix_mode()
            .filter(|_| unix)
            .map(|m| m & 0o777)
            .filter(|&m| m != 0);
        entries.push(Entry {
            index,
            path,
            kind,
            size,
            mode,
            target: None,
        });
    }
    // Entries sharing compressed data (overlapping-entry bombs) or hiding inside one another.
    spans.sort_unstable();
    if let Some(pair) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
        let name = show(&entries[pair[1].2].path);
        return Err(PackageError::Malformed(format!(
            "entry {name:?} overlaps another entry"
        )));
    }
    for entry in entries.iter_mut().filter(|e| e.kind == Kind::Symlink) {
        if entry.size > MAX_TARGET {
            return Err(PackageError::UnsafeSymlink(show(&entry.path)));
        }
        let mut target = Vec::new();
        let mut file = archive
            .by_index(entry.index)
            .map_err(PackageError::NotAZip)?;
        copy_entry(&mut file, entry, &mut target)?;
        let target = String::from_utf8(target)
            .map_err(|_| PackageError::UnsafeSymlink(show(&entry.path)))?;
        check_target(&entry.path, &target)?;
        entry.target = Some(target);
    }
    check_tree(&entries)?;
    let info = PackageInfo {
        sha256: Sha256::digest(bytes).into(),
        zipped_bytes: zipped,
        unzipped_bytes: unzipped,
        entries: entries.len(),
    };
    Ok(Scan {
        archive,
        entries,
        info,
    })
}

/// Walks the central directory's records in the raw bytes: the zip crate keeps one entry per
/// name (the last one read), so without this a second record of a name would silently replace
/// the first, and records beyond the distinct names would escape the entry limit.
fn check_directory_names(
    bytes: &[u8],
    start: u64,
    distinct: usize,
    limits: &PackageLimits,
) -> Result<(), PackageError> {
    const RECORD: &[u8; 4] = b"PK\x01\x02";
    const FIXED: usize = 46;
    let truncated = || PackageError::Malformed("truncated central directory".into());
    let mut pos = usize::try_from(start).map_err(|_| truncated())?;
    let mut names = std::collections::HashSet::with_capacity(distinct);
    while bytes.get(pos..pos + 4) == Some(RECORD.as_slice()) {
        let header = bytes.get(pos..pos + FIXED).ok_or_else(truncated)?;
        let field = |at: usize| usize::from(u16::from_le_bytes([header[at], header[at + 1]]));
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let name = bytes
            .get(pos + FIXED..pos + FIXED + name_len)
            .ok_or_else(truncated)?;
        if names.len() == limits.max_entries {
            return Err(PackageError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        if !names.insert(name) {
            return Err(PackageError::DuplicateEntry(show(
                &String::from_utf8_lossy(name),
            )));
        }
        pos += FIXED + name_len + extra_len + comment_len;
    }
    if names.len() != distinct {
        return Err(PackageError::Malformed(format!(
            "the central directory holds {} entries, of which {distinct} could be read",
            names.len()
        )));
    }
    Ok(())
}

/// Checks an entry name and returns it normalised (empty and `.` components dropped).
fn check_name(raw: &[u8], name: &str) -> Result<String, PackageError> {
    let unsafe_path = || PackageError::UnsafePath(show(name));
    if raw.contains(&0)
        || name.contains(['\0', '\\'])
        || name.starts_with('/')
        || name.len() > MAX_NAME
    {
        return Err(unsafe_path());
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_path()),
            _ if part.len() > MAX_COMPONENT => return Err(unsafe_path()),
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path());
    }
    Ok(parts.join("/"))
}

/// Checks a symlink target relative to the link's normalised path. `..` may only lead the
/// target, and no further than the link's depth: with no `..` after a name, and no entry below a
/// symlink (see `check_tree`), resolution can never climb out of the root even through chains of
/// symlinks.
fn check_target(link: &str, target: &str) -> Result<(), PackageError> {
    let unsafe_target =
        || PackageError::UnsafeSymlink(format!("{} -> {}", show(link), show(target)));
    if target.is_empty() || target.starts_with('/') || target.contains(['\0', '\\']) {
        return Err(unsafe_target());
    }
    let (mut ups, mut named) = (0, false);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if !named => ups += 1,
            ".." => return Err(unsafe_target()),
            _ => named = true,
        }
    }
    let depth = link.trim_end_matches('/').matches('/').count();
    if ups > depth {
        return Err(unsafe_target());
    }
    Ok(())
}

/// Rejects paths that collide once normalised (`a`, `./a`, `a/`) and entries below a file or a
/// symlink.
fn check_tree(entries: &[Entry]) -> Result<(), PackageError> {
    let mut kinds = BTreeMap::new();
    for entry in entries {
        if kinds.insert(entry.path.as_str(), entry.kind).is_some() {
            return Err(PackageError::DuplicateEntry(show(&entry.path)));
        }
    }
    for entry in entries {
        let mut ancestors = entry.path.match_indices('/').map(|(i, _)| &entry.path[..i]);
        if ancestors.any(|a| kinds.get(a).is_some_and(|&k| k != Kind::Dir)) {
            return Err(PackageError::UnsafePath(show(&entry.path)));
        }
    }
    Ok(())
}

/// Streams an entry into `sink`, reading at most one byte past its declared size, and fails unless
/// it yields exactly that size (the checksum is verified when the entry's end is reached).
fn copy_entry<R: Read>(
    file: &mut ZipFile<'_, R>,
    entry: &Entry,
    sink: &mut impl Write,
) -> Result<(), PackageError> {
    let mut reader = file.take(entry.size.saturating_add(1));
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(PackageError::Corrupt {
                    entry: show(&entry.path),
                    source,
                })
            }
        };
        total += n as u64;
        if total > entry.size {
            return Err(PackageError::SizeMismatch(show(&entry.path)));
        }
        sink.write_all(&buf[..n]).map_err(PackageError::Io)?;
    }
    if total != entry.size {
        return Err(PackageError::SizeMismatch(show(&entry.path)));
    }
    Ok(())
}

/// Shortens a name taken from untrusted input for use in a message.
fn show(name: &str) -> String {
    const MAX: usize = 200;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &name[..i]),
        None => name.to_owned(),
    }
}

/// The upload as a seekable reader that fails once `left` bytes have been read in total.
#[derive(Debug)]
struct Budgeted<'a> {
    inner: Cursor<&'a [u8]>,
    left: u64,
}

impl Read for Budgeted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(io::Error::other("zip read budget exhausted"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl Seek for Budgeted<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};
    use zip::result::ZipResult;
    use zip::write::FullFileOptions;

    type Writer = ZipWriter<Cursor<Vec<u8>>>;

    fn opts(mode: u32) -> SimpleFileOptions {
        SimpleFileOptions::default().unix_permissions(mode)
    }

    fn build(f: impl FnOnce(&mut Writer) -> ZipResult<()>) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        f(&mut zip).unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn file(
        zip: &mut Writer,
        name: &str,
        data: &[u8],
        options: SimpleFileOptions,
    ) -> ZipResult<()> {
        zip.start_file(name, options)?;
        zip.write_all(data)?;
        Ok(())
    }

    fn one_file(name: &str, data: &[u8]) -> Vec<u8> {
        build(|z| file(z, name, data, opts(0o644)))
    }

    fn one_link(name: &str, target: &str) -> Vec<u8> {
        build(|z| z.add_symlink(name, target, opts(0o777)))
    }

    /// Offsets of every occurrence of a 4-byte zip signature.
    fn find(zip: &[u8], sig: &[u8; 4]) -> Vec<usize> {
        zip.windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect()
    }
    const LOCAL: &[u8; 4] = b"PK\x03\x04";
    const CENTRAL: &[u8; 4] = b"PK\x01\x02";
    const EOCD: &[u8; 4] = b"PK\x05\x06";

    fn put_u32(zip: &mut [u8], at: usize, v: u32) {
        zip[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn small(max_zipped: u64, max_unzipped: u64, max_entries: usize) -> PackageLimits {
        PackageLimits {
            max_zipped_bytes: max_zipped,
            max_unzipped_bytes: max_unzipped,
            max_entries,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn good_package() -> Vec<u8> {
        build(|z| {
            file(z, "bootstrap", b"#!/bin/sh\necho hi\n", opts(0o755))?;
            z.add_directory("lib/", opts(0o755))?;
            file(z, "lib/data.txt", &[7u8; 5000], opts(0o644))?;
            file(
                z,
                "lib/sub/raw.bin",
                b"stored",
                opts(0o600).compression_method(CompressionMethod::Stored),
            )?;
            z.add_symlink("current", "lib/data.txt", opts(0o777))?;
            z.add_symlink("lib/sub/up", "../data.txt", opts(0o777))?;
            file(z, "./dot/file", b"dot", opts(0o640))
        })
    }

    fn assert_good_tree(root: &Path) {
        assert_eq!(
            fs::read(root.join("bootstrap")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(mode_of(&root.join("bootstrap")), 0o755);
        assert_eq!(
            fs::read(root.join("lib/data.txt")).unwrap(),
            vec![7u8; 5000]
        );
        assert_eq!(mode_of(&root.join("lib/data.txt")), 0o644);
        assert_eq!(fs::read(root.join("lib/sub/raw.bin")).unwrap(), b"stored");
        assert_eq!(mode_of(&root.join("lib/sub/raw.bin")), 0o600);
        assert_eq!(
            fs::read_link(root.join("current")).unwrap(),
            Path::new("lib/data.txt")
        );
        assert_eq!(fs::read(root.join("current")).unwrap(), vec![7u8; 5000]);
        assert_eq!(
            fs::read_link(root.join("lib/sub/up")).unwrap(),
            Path::new("../data.txt")
        );
        assert_eq!(fs::read(root.join("lib/sub/up")).unwrap(), vec![7u8; 5000]);
        assert_eq!(fs::read(root.join("dot/file")).unwrap(), b"dot");
    }

    #[test]
    fn good_package_round_trips() {
        let zip = good_package();
        let info = inspect(&zip, &PackageLimits::default()).unwrap();
        let digest: [u8; 32] = Sha256::digest(&zip).into();
        assert_eq!(info.sha256, digest);
        assert_eq!(info.sha256_hex(), hex::encode(digest));
        assert_eq!(
            info.sha256_base64(),
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(info.sha256_base64().len(), 44);
        assert_eq!(info.zipped_bytes, zip.len() as u64);
        assert_eq!(info.entries, 7);
        assert_eq!(info.unzipped_bytes, 18 + 5000 + 6 + 12 + 11 + 3);

        let dest = tempfile::tempdir().unwrap();
        assert_eq!(
            extract(&zip, dest.path(), &PackageLimits::default()).unwrap(),
            info
        );
        assert_good_tree(dest.path());

        // zip_dir of the extracted tree: deterministic, valid, and extracts to the same tree.
        let rezipped = zip_dir(dest.path()).unwrap();
        assert_eq!(rezipped, zip_dir(dest.path()).unwrap());
        let info2 = inspect(&rezipped, &PackageLimits::default()).unwrap();
        assert_eq!(
            info2.entries, 9,
            "7 entries plus the implicit dirs lib/sub/ and dot/"
        );
        assert_eq!(info2.unzipped_bytes, info.unzipped_bytes);
        let names: Vec<String> = ZipArchive::new(Cursor::new(&rezipped))
            .unwrap()
            .file_names()
            .map(String::from)
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"lib/sub/".to_string()));
        let dest2 = tempfile::tempdir().unwrap();
        extract(&rezipped, dest2.path(), &PackageLimits::default()).unwrap();
        assert_good_tree(dest2.path());
    }

    #[test]
    fn modes_default_when_the_zip_has_none() {
        let mut zip = build(|z| {
            file(z, "run", b"x", opts(0o700))?;
            z.add_directory("d/", opts(0o700))
        });
        for at in find(&zip, CENTRAL) {
            zip[at + 5] = 0; // "version made by" host system: MS-DOS
        }
        let dest = tempfile::tempdir().unwrap();
        extract(&zip, dest.path(), &PackageLimits::default()).unwrap();
        assert_eq!(mode_of(&dest.path().join("run")), 0o644);
        assert_eq!(mode_of(&dest.path().join("d")), 0o755);
    }

    #[test]
    fn extract_wants_an_empty_destination() {
        let dest = tempfile::tempdir().unwrap();
        fs::write(dest.path().join("x"), b"").unwrap();
        let err = extract(&good_package(), dest.path(), &PackageLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::Io(_)), "{err:?}");
    }

    #[test]
    fn rejects_garbage_and_empty_input() {
        let limits = PackageLimits::default();
        let err = inspect(b"definitely not a zip file", &limits).unwrap_err();
        assert!(matches!(err, PackageError::NotAZip(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Could not unzip uploaded file. Please check your file, then try to upload again."
        );
        assert!(!err.is_too_large());
        assert!(matches!(inspect(&[], &limits), Err(PackageError::Empty)));
        let empty_zip = build(|_| Ok(()));
        assert!(matches!(
            inspect(&empty_zip, &limits),
            Err(PackageError::Empty)
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(zip_dir(dir.path()), Err(PackageError::Empty)));
    }

    #[test]
    fn rejects_unsafe_names() {
        let names = [
            "../evil",
            "/etc/passwd",
            "a/../../b",
            "a/../b",
            "..\\evil",
            "a\\..\\..\\b",
            "nul\0name",
            "./",
            "//",
        ];
        for name in names {
            let zip = one_file(name, b"x");
            let err = inspect(&zip, &PackageLimits::default()).unwrap_err();
            assert!(
                matches!(err, PackageError::UnsafePath(_)),
                "{name:?}: {err:?}"
            );
            let dest = tempfile::tempdir().unwrap();
            assert!(extract(&zip, dest.path(), &PackageLimits::default()).is_err());
            assert_eq!(
                fs::read_dir(dest.path()).unwrap().count(),
                0,
                "{name:?} wrote something"
            );
        }
        let long = format!("{}/x", "a".repeat(256));
        assert!(matches!(
            inspect(&one_file(&long, b"x"), &PackageLimits::default()),
            Err(PackageError::UnsafePath(_))
        ));
    }

    /// The bounds on names are inclusive: a component of 255 bytes (`NAME_MAX`) and a name of
    /// 3072 bytes pass; a byte more fails.
    #[test]
    fn names_up_to_the_bounds_are_accepted() {
        let component = format!("{}/x", "a".repeat(255));
        inspect(&one_file(&component, b"x"), &PackageLimits::default()).unwrap();
        let dirs = format!("{}/", "d".repeat(254)).repeat(12);
        let longest = format!("{dirs}{}", "f".repeat(3072 - dirs.len()));
        assert_eq!(longest.len(), 3072);
        inspect(&one_file(&longest, b"x"), &PackageLimits::default()).unwrap();
        let err = inspect(
            &one_file(&format!("{longest}f"), b"x"),
            &PackageLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PackageError::UnsafePath(_)), "{err:?}");
    }

    #[test]
    fn rejects_entries_below_files_symlinks_and_duplicates() {
        let limits = PackageLimits::default();
        let below_file = build(|z| {
            file(z, "a", b"x", opts(0o644))?;
            file(z, "a/b", b"y", opts(0o644))
        });
        assert!(matches!(
            inspect(&below_file, &limits),
            Err(PackageError::UnsafePath(_))
        ));
        // `a -> .` is harmless on its own, but `a/b -> ..` would then resolve to the root's parent.
        let chain = build(|z| {
            z.add_symlink("a", ".", opts(0o777))?;
            z.add_symlink("a/b", "..", opts(0o777))
        });
        assert!(matches!(
            inspect(&chain, &limits),
            Err(PackageError::UnsafePath(_))
        ));
        let duplicate = build(|z| {
            file(z, "a", b"x", opts(0o644))?;
            file(z, "./a", b"y", opts(0o644))
        });
        assert!(matches!(
            inspect(&duplicate, &limits),
            Err(PackageError::DuplicateEntry(p)) if p == "a"
        ));
        let file_and_dir = build(|z| {
            file(z, "lib", b"x", opts(0o644))?;
            z.add_directory("lib/", opts(0o755))
        });
        assert!(matches!(
            inspect(&file_and_dir, &limits),
            Err(PackageError::DuplicateEntry(p)) if p == "lib"
        ));
    }

    /// A zip whose two entries are both named `app.py` (as `unzip -l` shows them): the zip
    /// writer refuses to make one, so the second entry's name is patched in afterwards.
    fn same_name_twice() -> Vec<u8> {
        let zip = build(|z| {
            file(z, "app.py", b"print('first')\n", opts(0o644))?;
            file(z, "app.pz", b"print('second')\n", opts(0o644))
        });
        let mut patched = zip.clone();
        let mut at = 0;
        while let Some(i) = patched[at..].windows(6).position(|w| w == b"app.pz") {
            patched[at + i..at + i + 6].copy_from_slice(b"app.py");
            at += i + 6;
        }
        assert_eq!(patched.len(), zip.len());
        assert_ne!(patched, zip, "the second name was patched");
        patched
    }

    #[test]
    fn rejects_two_entries_of_the_same_name() {
        let zip = same_name_twice();
        let limits = PackageLimits::default();
        let err = inspect(&zip, &limits).unwrap_err();
        assert!(
            matches!(&err, PackageError::DuplicateEntry(p) if p == "app.py"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "Zip file has more than one entry for \"app.py\""
        );
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            extract(&zip, dest.path(), &limits),
            Err(PackageError::DuplicateEntry(_))
        ));
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
    }

    #[test]
    fn records_sharing_a_name_count_toward_the_entry_limit() {
        // The zip crate sees one entry here; the central directory has two.
        let zip = same_name_twice();
        assert!(matches!(
            inspect(&zip, &small(1 << 20, 1 << 20, 1)),
            Err(PackageError::TooManyEntries { limit: 1 })
        ));
    }

    #[test]
    fn rejects_escaping_symlinks() {
        let bad = [
            ("l", "/etc/passwd"),
            ("l", "../x"),
            ("a/l", "../../x"),
            ("l", "a/../../x"),
            ("l", "a/.."),
            ("l", ""),
            ("l", "..\\x"),
        ];
        for (link, target) in bad {
            let err = inspect(&one_link(link, target), &PackageLimits::default()).unwrap_err();
            assert!(
                matches!(err, PackageError::UnsafeSymlink(_)),
                "{link} -> {target}: {err:?}"
            );
        }
        // Lexically inside, but through `d/a -> ..` the kernel resolves `d/x` to the root's parent.
        let chain = build(|z| {
            z.add_symlink("d/a", "..", opts(0o777))?;
            z.add_symlink("d/x", "a/..", opts(0o777))
        });
        assert!(matches!(
            inspect(&chain, &PackageLimits::default()),
            Err(PackageError::UnsafeSymlink(_))
        ));
        for (link, target) in [
            ("l", "x"),
            ("a/b/l", "../../x"),
            ("a/l", "./../y/z"),
            ("l", "."),
        ] {
            inspect(&one_link(link, target), &PackageLimits::default()).unwrap();
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", outside.path().join("etc")).unwrap();
        assert!(matches!(
            zip_dir(outside.path()),
            Err(PackageError::UnsafeSymlink(_))
        ));
    }

    /// Central directory records with extra fields and comments (Info-ZIP writes timestamps
    /// there; `zip -c` writes comments): every record after them is still found, and a second
    /// record of a name after them is still caught.
    #[test]
    fn records_with_extra_fields_and_comments_are_walked_whole() {
        let with_extras = |names: [&str; 3]| {
            let mut zip = build(|z| {
                names.iter().try_for_each(|name| {
                    let mut options = FullFileOptions::default().unix_permissions(0o644);
                    // An extended timestamp (0x5455), as Info-ZIP writes it.
                    options.add_extra_data(0x5455, Box::new([1, 0, 0, 0, 0]), true)?;
                    z.start_file(*name, options)?;
                    z.write_all(name.as_bytes())?;
                    Ok(())
                })
            });
            // Gives every record a comment: inserted after its name and extra field, last record
            // first so the earlier offsets hold, then the directory's size is patched.
            let comment = b"a comment";
            let records = find(&zip, CENTRAL);
            for &at in records.iter().rev() {
                let field = |zip: &[u8], off: usize| {
                    usize::from(u16::from_le_bytes([zip[at + off], zip[at + off + 1]]))
                };
                assert_eq!(field(&zip, 30), 9, "the extra field is there");
                let end = at + 46 + field(&zip, 28) + field(&zip, 30);
                zip.splice(end..end, comment.iter().copied());
                zip[at + 32..at + 34].copy_from_slice(&(comment.len() as u16).to_le_bytes());
            }
            let eocd = *find(&zip, EOCD).last().unwrap();
            let size = u32::from_le_bytes(zip[eocd + 12..eocd + 16].try_into().unwrap());
            let grown = size + (records.len() * comment.len()) as u32;
            put_u32(&mut zip, eocd + 12, grown);
            zip
        };
        let zip = with_extras(["a.py", "b.py", "c.py"]);
        let info = inspect(&zip, &PackageLimits::default()).unwrap();
        assert_eq!(info.entries, 3);
        let mut archive = ZipArchive::new(Cursor::new(&zip)).unwrap();
        assert_eq!(archive.by_index(2).unwrap().comment(), "a comment");
        // The zip crate keeps one of two records of a name; the walk must reach the second.
        let mut twice = with_extras(["a.py", "b.py", "b.pz"]);
        let at = twice.windows(4).rposition(|w| w == b"b.pz").unwrap();
        twice[at..at + 4].copy_from_slice(b"b.py");
        let local = twice.windows(4).position(|w| w == b"b.pz").unwrap();
        twice[local..local + 4].copy_from_slice(b"b.py");
        let err = inspect(&twice, &PackageLimits::default()).unwrap_err();
        assert!(
            matches!(&err, PackageError::DuplicateEntry(p) if p == "b.py"),
            "{err:?}"
        );
    }

    /// A symlink target may be as long as Linux allows (`PATH_MAX` less the NUL), no longer.
    #[test]
    fn symlink_targets_up_to_path_max() {
        let longest = "t".repeat(4095);
        inspect(&one_link("l", &longest), &PackageLimits::default()).unwrap();
        let err = inspect(
            &one_link("l", &format!("{longest}t")),
            &PackageLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PackageError::UnsafeSymlink(_)), "{err:?}");
    }

    /// Names longer than 255 bytes are common (deep `node_modules` trees): their lengths take
    /// both bytes of the header fields, and each name is read whole (two that differ only in
    /// their last bytes are not taken for duplicates).
    #[test]
    fn entries_with_long_names_are_read_whole() {
        let deep = |leaf: &str| format!("{}{leaf}", "node_modules/some-package/".repeat(12));
        let (first, second) = (deep("index.js"), deep("index.ts"));
        assert!(first.len() > 300);
        let zip = build(|z| {
            file(z, &first, b"module.exports = 1;\n", opts(0o644))?;
            file(z, &second, b"{}", opts(0o644))
        });
        assert_eq!(inspect(&zip, &PackageLimits::default()).unwrap().entries, 2);
        let dest = tempfile::tempdir().unwrap();
        extract(&zip, dest.path(), &PackageLimits::default()).unwrap();
        assert_eq!(fs::read(dest.path().join(&second)).unwrap(), b"{}");
        assert_eq!(
            fs::read(dest.path().join(&first)).unwrap(),
            b"module.exports = 1;\n"
        );
    }

    /// Zip64 records only for a file that needs them (4 GiB or more): a small file's headers
    /// carry no extra field, so any unzip tool reads the package.
    #[test]
    fn zip_dir_writes_small_files_without_zip64() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("bootstrap"), b"#!/bin/sh\n").unwrap();
        let zip = zip_dir(dir.path()).unwrap();
        let extra_len = |at: usize| u16::from_le_bytes([zip[at], zip[at + 1]]);
        let local = find(&zip, LOCAL);
        let central = find(&zip, CENTRAL);
        assert_eq!((local.len(), central.len()), (1, 1));
        assert_eq!(extra_len(local[0] + 28), 0, "local header extra field");
        assert_eq!(extra_len(central[0] + 30), 0, "central header extra field");
    }

    #[test]
    fn zip_dir_refuses_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        assert!(matches!(
            zip_dir(dir.path()),
            Err(PackageError::Unsupported(_))
        ));
        let mut fifo = one_file("fifo", b"");
        for at in find(&fifo, CENTRAL) {
            put_u32(&mut fifo, at + 38, 0o010_644 << 16);
        }
        assert!(matches!(
            inspect(&fifo, &PackageLimits::default()),
            Err(PackageError::Unsupported(_))
        ));
    }

    #[test]
    fn rejects_too_many_entries() {
        let zip = build(|z| (0..5).try_for_each(|i| file(z, &format!("f{i}"), b"", opts(0o644))));
        assert_eq!(
            inspect(&zip, &small(u64::MAX, u64::MAX, 5))
                .unwrap()
                .entries,
            5
        );
        let err = inspect(&zip, &small(u64::MAX, u64::MAX, 4)).unwrap_err();
        assert!(
            matches!(err, PackageError::TooManyEntries { limit: 4 }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_zipped_over_the_limit() {
        let zip = good_package();
        let limit = zip.len() as u64 - 1;
        let err = inspect(&zip, &small(limit, u64::MAX, 100)).unwrap_err();
        assert!(err.is_too_large());
        assert!(
            matches!(err, PackageError::TooLarge { size, limit: l } if size == zip.len() as u64 && l == limit)
        );
        assert_eq!(
            err.to_string(),
            format!("Zipped size must be smaller than {limit} bytes")
        );
        inspect(&zip, &small(limit + 1, u64::MAX, 100)).unwrap();
    }

    #[test]
    fn rejects_unzipped_over_the_limit() {
        let zip = one_file("zeros", &vec![0u8; 10 << 20]);
        assert!(zip.len() < 100 << 10);
        inspect(&zip, &PackageLimits::default()).unwrap();
        let err = inspect(&zip, &small(u64::MAX, 1 << 20, 10)).unwrap_err();
        assert!(matches!(
            err,
            PackageError::UnzippedTooLarge { limit: 1_048_576 }
        ));
        assert!(!err.is_too_large());
        assert_eq!(
            err.to_string(),
            "Unzipped size must be smaller than 1048576 bytes"
        );
        // The limit itself is allowed, as for the zipped size; a byte more is not.
        let exact = 10 << 20;
        assert_eq!(
            inspect(&zip, &small(u64::MAX, exact, 10))
                .unwrap()
                .unzipped_bytes,
            exact
        );
        assert!(matches!(
            inspect(&zip, &small(u64::MAX, exact - 1, 10)),
            Err(PackageError::UnzippedTooLarge { .. })
        ));
    }

    /// Patches an entry's uncompressed size in both its local and central headers.
    fn with_declared_size(mut zip: Vec<u8>, size: u32) -> Vec<u8> {
        for at in find(&zip, LOCAL) {
            put_u32(&mut zip, at + 22, size);
        }
        for at in find(&zip, CENTRAL) {
            put_u32(&mut zip, at + 24, size);
        }
        zip
    }

    #[test]
    fn rejects_lying_declared_sizes() {
        let limits = small(u64::MAX, 1 << 20, 10);
        let zip = one_file("zeros", &vec![0u8; 10 << 20]);
        // Declares 1000 bytes but inflates to 10 MiB: stopped at byte 1001.
        let err = inspect(&with_declared_size(zip.clone(), 1000), &limits).unwrap_err();
        assert!(matches!(err, PackageError::SizeMismatch(_)), "{err:?}");
        let dest = tempfile::tempdir().unwrap();
        let err =
            extract(&with_declared_size(zip.clone(), 1000), dest.path(), &limits).unwrap_err();
        assert!(matches!(err, PackageError::SizeMismatch(_)), "{err:?}");
        assert!(fs::metadata(dest.path().join("zeros")).unwrap().len() <= 1000);
        // Declares more than it holds.
        let err = inspect(
            &with_declared_size(zip, (10 << 20) + 1),
            &PackageLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PackageError::SizeMismatch(_)), "{err:?}");
        // Same for a stored entry.
        let stored = build(|z| {
            file(
                z,
                "s",
                b"hello",
                opts(0o644).compression_method(CompressionMethod::Stored),
            )
        });
        let err = inspect(&with_declared_size(stored, 3), &PackageLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::SizeMismatch(_)), "{err:?}");
    }

    #[test]
    fn rejects_bad_checksums() {
        let mut zip = one_file("f", b"some content");
        for at in find(&zip, CENTRAL) {
            zip[at + 16] ^= 0xff;
        }
        let err = inspect(&zip, &PackageLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::Corrupt { .. }), "{err:?}");
        assert!(
            !err.to_string().contains("checksum"),
            "the message repeats its source"
        );
    }

    #[test]
    fn rejects_overlapping_entries() {
        // Fifield-style: many central records naming the same local entry, each one inflating to
        // 1 MiB: 26 MiB of output from one copy of the compressed data.
        let zip = one_file("a", &vec![0u8; 1 << 20]);
        let cd = find(&zip, CENTRAL)[0];
        let eocd = find(&zip, EOCD)[0];
        let record = &zip[cd..eocd];
        let mut bomb = zip[..eocd].to_vec();
        for c in b'b'..=b'z' {
            let mut copy = record.to_vec();
            copy[46] = c;
            bomb.extend_from_slice(&copy);
        }
        let mut end = zip[eocd..].to_vec();
        end[8..10].copy_from_slice(&26u16.to_le_bytes());
        end[10..12].copy_from_slice(&26u16.to_le_bytes());
        put_u32(&mut end, 12, 26 * record.len() as u32);
        bomb.extend_from_slice(&end);
        assert_eq!(ZipArchive::new(Cursor::new(&bomb)).unwrap().len(), 26);
        let err = inspect(&bomb, &PackageLimits::default()).unwrap_err();
        assert!(matches!(err, PackageError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn many_end_records_cannot_make_parsing_quadratic() {
        // Each fake end record points at a 2,000-entry central directory but claims one entry more,
        // so the parser would walk the directory again for every one of the 20,000 candidates.
        let zip =
            build(|z| (0..2000).try_for_each(|i| file(z, &format!("f{i:04}"), b"", opts(0o644))));
        let eocd = find(&zip, EOCD)[0];
        let mut fake = zip[eocd..].to_vec();
        fake[8..10].copy_from_slice(&2001u16.to_le_bytes());
        fake[10..12].copy_from_slice(&2001u16.to_le_bytes());
        let mut hostile = zip.clone();
        for _ in 0..20_000 {
            hostile.extend_from_slice(&fake);
        }
        let start = Instant::now();
        let result = inspect(&hostile, &PackageLimits::default());
        assert!(result.is_err(), "{result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn read_budget_leaves_legitimate_zips_ample_room() {
        let big: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let zip = build(|z| {
            (0..3000)
                .try_for_each(|i| file(z, &format!("d{}/f{i}", i % 7), b"tiny", opts(0o644)))?;
            file(z, "big", &big, opts(0o644))
        });
        let mut scan = scan(&zip, &PackageLimits::default()).unwrap();
        for entry in &scan.entries {
            let mut file = scan.archive.by_index(entry.index).unwrap();
            copy_entry(&mut file, entry, &mut io::sink()).unwrap();
        }
        let budget = (zip.len() as u64) * 4 + (1 << 20);
        let read = budget - scan.archive.into_inner().left;
        assert!(
            read < 2 * zip.len() as u64,
            "read {read} bytes of a {} byte zip",
            zip.len()
        );
    }

    #[test]
    fn messages_do_not_repeat_their_source() {
        let errors = [
            PackageError::NotAZip(ZipError::InvalidArchive("bad things".into())),
            PackageError::Corrupt {
                entry: "e".into(),
                source: io::Error::other("bad things"),
            },
            PackageError::Io(io::Error::other("bad things")),
            PackageError::ZipWrite(ZipError::InvalidArchive("bad things".into())),
        ];
        for err in errors {
            assert!(std::error::Error::source(&err).is_some());
            assert!(!err.to_string().contains("bad things"), "{err}");
            assert!(!err.is_too_large());
        }
        assert_eq!(show(&"x".repeat(1000)).len(), 203);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
            if magic && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(LOCAL);
            }
            let result = inspect(&bytes, &PackageLimits::default());
            prop_assert!(!matches!(result, Err(PackageError::Io(_))), "{:?}", result);
        }

        #[test]
        fn flipped_bytes_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..8), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
            let mut zip = good_package();
            for (at, xor) in flips {
                let i = at.index(zip.len());
                zip[i] ^= xor;
            }
            if truncate {
                zip.truncate(cut.index(zip.len()));
            }
            let start = Instant::now();
            let result = inspect(&zip, &PackageLimits::default());
            prop_assert!(!matches!(result, Err(PackageError::Io(_))), "{:?}", result);
            prop_assert!(start.elapsed() < Duration::from_secs(5));
        }

        #[test]
        fn zip_dir_round_trips(files in proptest::collection::btree_map(
            ("(|a/|a/b/|c/)", "(x|y\\.txt|bootstrap)"),
            (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()),
            1..8,
        )) {
            let src = tempfile::tempdir().unwrap();
            let mut total = 0u64;
            for ((dir, name), (data, exec)) in &files {
                fs::create_dir_all(src.path().join(dir)).unwrap();
                let path = src.path().join(dir).join(name);
                fs::write(&path, data).unwrap();
                fs::set_permissions(&path, Permissions::from_mode(if *exec { 0o755 } else { 0o644 })).unwrap();
                total += data.len() as u64;
            }
            let zip = zip_dir(src.path()).unwrap();
            let info = inspect(&zip, &PackageLimits::default()).unwrap();
            prop_assert_eq!(info.unzipped_bytes, total);
            let dest = tempfile::tempdir().unwrap();
            extract(&zip, dest.path(), &PackageLimits::default()).unwrap();
            for ((dir, name), (data, exec)) in &files {
                let path = dest.path().join(dir).join(name);
                prop_assert_eq!(&fs::read(&path).unwrap(), data);
                prop_assert_eq!(mode_of(&path) & 0o111 != 0, *exec);
            }
        }
    }
}
