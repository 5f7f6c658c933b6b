//! The packages of an app's lock file: `Cargo.lock` (Rust) or
//! `package-lock.json` (Node, lockfile versions 1 to 3), found in the app's
//! directory or the nearest directory above it inside the repository.

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

/// A lock file is read up to this size; a larger one is refused, not truncated.
const LOCKFILE_LIMIT: u64 = 64 * 1024 * 1024;

/// A package pinned by a lock file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Package {
    /// `cargo` or `npm`.
    pub(crate) ecosystem: &'static str,
    pub(crate) name: String,
    pub(crate) version: String,
    /// A content hash the lock file records: (CycloneDX algorithm name, hex).
    pub(crate) hash: Option<(&'static str, String)>,
}

impl Package {
    /// Its package URL, e.g. `pkg:cargo/serde@1.0.0`, `pkg:npm/%40types/node@20.0.0`.
    pub(crate) fn purl(&self) -> String {
        let name = self.name.replace('@', "%40");
        format!("pkg:{}/{name}@{}", self.ecosystem, self.version)
    }
}

/// The lock files found for the app at `app_dir` (relative to `root`), and
/// their packages, sorted; the path of each file read is given back too.
pub(crate) fn packages(root: &Path, app_dir: &str) -> Result<(Vec<String>, Vec<Package>), String> {
    let mut dir = Path::new(app_dir);
    loop {
        let mut found = Vec::new();
        let mut packages = Vec::new();
        for (file, parse) in [
            (
                "Cargo.lock",
                cargo as fn(&str) -> Result<Vec<Package>, String>,
            ),
            ("package-lock.json", npm),
        ] {
            let relative = dir.join(file);
            let path = root.join(&relative);
            if path.is_file() {
                let text = read_bounded(&path)?;
                packages.extend(parse(&text).map_err(|e| format!("{}: {e}", relative.display()))?);
                found.push(relative.to_string_lossy().into_owned());
            }
        }
        if !found.is_empty() {
            packages.sort();
            packages.dedup();
            return Ok((found, packages));
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return Ok((Vec::new(), Vec::new())),
        }
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(LOCKFILE_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > LOCKFILE_LIMIT {
        return Err(format!(
            "{} is larger than {LOCKFILE_LIMIT} bytes",
            path.display()
        ));
    }
    Ok(text)
}

/// `[[package]]` entries of a `Cargo.lock`: name, version, and the sha256 of
/// registry packages (`checksum`).
fn cargo(text: &str) -> Result<Vec<Package>, String> {
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        name: String,
        version: String,
        checksum: Option<String>,
    }
    let lock: Lock = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(lock
        .package
        .into_iter()
        .map(|p| Package {
            ecosystem: "cargo",
            hash: p
                .checksum
                .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|c| ("SHA-256", c.to_ascii_lowercase())),
            name: p.name,
            version: p.version,
        })
        .collect())
}

/// The packages of a `package-lock.json`: `packages` (lockfile v2, v3) or the
/// nested `dependencies` (v1), with the hash of their `integrity`.
fn npm(text: &str) -> Result<Vec<Package>, String> {
    let lock: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(packages) = lock.get("packages").and_then(Value::as_object) {
        for (path, entry) in packages {
            // "" is the project itself; links point at workspace folders.
            if path.is_empty() || entry.get("link").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| path.rsplit_once("node_modules/").map(|(_, n)| n.to_owned()));
            if let (Some(name), Some(package)) = (name, npm_package_of(entry)) {
                out.push(Package { name, ..package });
            }
        }
    } else if let Some(deps) = lock.get("dependencies").and_then(Value::as_object) {
        npm_v1(deps, &mut out);
    }
    Ok(out)
}

fn npm_v1(deps: &serde_json::Map<String, Value>, out: &mut Vec<Package>) {
    for (name, entry) in deps {
        if let Some(package) = npm_package_of(entry) {
            out.push(Package {
                name: name.clone(),
                ..package
            });
        }
        if let Some(nested) = entry.get("dependencies").and_then(Value::as_object) {
            npm_v1(nested, out);
        }
    }
}

/// Version and hash of an npm lock entry (its name filled in by the caller).
fn npm_package_of(entry: &Value) -> Option<Package> {
    let version = entry.get("version")?.as_str()?.to_owned();
    let hash = entry
        .get("integrity")
        .and_then(Value::as_str)
        .and_then(sri_to_hex);
    Some(Package {
        ecosystem: "npm",
        name: String::new(),
        version,
        hash,
    })
}

/// `sha512-<base64>` (the strongest of several) → ("SHA-512", hex).
fn sri_to_hex(integrity: &str) -> Option<(&'static str, String)> {
    let mut best = None;
    for token in integrity.split_whitespace() {
        let (alg, b64) = token.split_once('-')?;
        let (name, rank) = match alg {
            "sha512" => ("SHA-512", 3),
            "sha384" => ("SHA-384", 2),
            "sha256" => ("SHA-256", 1),
            _ => continue,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.split('?').next()?)
            .ok()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
            best = Some((rank, name, hex));
        }
    }
    best.map(|(_, name, hex)| (name, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_lock_packages_carry_their_checksums() {
        let lock = r#"
version = 4

[[package]]
name = "api"
version = "0.1.0"
dependencies = ["serde"]

[[package]]
name = "serde"
version = "1.0.219"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6"
"#;
        let packages = cargo(lock).expect("parses");
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[1].purl(), "pkg:cargo/serde@1.0.219");
        assert_eq!(
            packages[1].hash,
            Some((
                "SHA-256",
                "5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6".into()
            ))
        );
        assert_eq!(packages[0].hash, None);
    }

    #[test]
    fn package_lock_v3_and_v1_give_names_versions_and_sha512() {
        let v3 = r#"{"lockfileVersion": 3, "packages": {
            "": {"name": "web", "version": "1.0.0"},
            "node_modules/@types/node": {"version": "20.1.0", "integrity": "sha512-AAEC"},
            "node_modules/a/node_modules/b": {"version": "2.0.0"},
            "packages/ui": {"link": true}
        }}"#;
        let packages = npm(v3).expect("parses");
        let purls: Vec<String> = packages.iter().map(Package::purl).collect();
        assert_eq!(purls, ["pkg:npm/%40types/node@20.1.0", "pkg:npm/b@2.0.0"]);
        assert_eq!(packages[0].hash, Some(("SHA-512", "000102".into())));
        let v1 = r#"{"lockfileVersion": 1, "dependencies": {"left-pad": {"version": "1.3.0",
            "dependencies": {"x": {"version": "0.1.0"}}}}}"#;
        let purls: Vec<String> = npm(v1).expect("parses").iter().map(Package::purl).collect();
        assert_eq!(purls, ["pkg:npm/left-pad@1.3.0", "pkg:npm/x@0.1.0"]);
    }
}
