//! The web console's assets, embedded: the bundle `console/build.mjs` builds from `console/src`
//! into `crates/console/assets/` (committed, so building Ember needs no Node.js), each file with
//! its precompressed `.gz` and `.br` forms. No HTTP here: `ember-api`'s `console` module serves
//! what [`asset`] finds.

#![forbid(unsafe_code)]

mod files {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// One file of the console, as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its name in the bundle (`index.html`, `app.3f2a9c1d.js`).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// Its gzip form, when the bundle has one.
    pub gzip: Option<&'static [u8]>,
    /// Its brotli form, when the bundle has one.
    pub brotli: Option<&'static [u8]>,
    /// Whether its name carries a hash of its content, so that it may be cached for ever
    /// (everything but `index.html`, which names the others and must be revalidated).
    pub immutable: bool,
}

/// The page every console path that names no file answers: the single-page app's shell.
pub const INDEX: &str = "index.html";

/// The bundle's file called `name` (a name under `/console/`; empty means [`INDEX`]), if any.
/// A compressed form is not a file of its own: `app.js.gz` is found as `app.js`'s `gzip`.
pub fn asset(name: &str) -> Option<Asset> {
    let name = if name.is_empty() { INDEX } else { name };
    if name.ends_with(".gz") || name.ends_with(".br") {
        return None;
    }
    let body = file(name)?;
    Some(Asset {
        name: files::FILES.iter().find(|(n, _)| *n == name)?.0,
        content_type: content_type(name),
        body,
        gzip: file(&format!("{name}.gz")),
        brotli: file(&format!("{name}.br")),
        immutable: name != INDEX,
    })
}

/// Every asset of the bundle (compressed forms folded into theirs).
pub fn assets() -> impl Iterator<Item = Asset> {
    files::FILES.iter().filter_map(|(name, _)| asset(name))
}

fn file(name: &str) -> Option<&'static [u8]> {
    files::FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The `Content-Type` of a bundle file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_shell_is_found_by_its_name_and_by_nothing() {
        let index = asset("").expect("the bundle has an index.html");
        assert_eq!(index.name, INDEX);
        assert_eq!(asset(INDEX), Some(index));
        assert!(index.content_type.starts_with("text/html"));
        assert!(!index.immutable, "index.html must be revalidated");
    }

    #[test]
    fn every_script_and_style_the_shell_names_is_in_the_bundle_and_immutable() {
        let index = std::str::from_utf8(asset(INDEX).unwrap().body).unwrap();
        let mut named = 0;
        for attr in ["src=\"/console/", "href=\"/console/"] {
            for (at, _) in index.match_indices(attr) {
                let rest = &index[at + attr.len()..];
                let name = &rest[..rest.find('"').unwrap()];
                let asset = asset(name).unwrap_or_else(|| panic!("{name} is not in the bundle"));
                assert!(asset.immutable, "{name}");
                named += 1;
            }
        }
        assert!(named >= 2, "index.html names its script and its style");
        assert!(
            !index.contains("<script>"),
            "no inline script (the CSP forbids them)"
        );
    }

    #[test]
    fn every_asset_has_both_compressed_forms_and_compressed_forms_are_not_files() {
        let mut seen = HashSet::new();
        for asset in assets() {
            assert!(asset.gzip.is_some(), "{} has no .gz", asset.name);
            assert!(asset.brotli.is_some(), "{} has no .br", asset.name);
            assert!(seen.insert(asset.name));
        }
        assert!(asset("index.html.gz").is_none());
        assert!(asset("index.html.br").is_none());
        assert!(asset("nothing.js").is_none());
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a.b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
