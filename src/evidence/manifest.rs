//! The bundle's `MANIFEST.json`: the sha256 and size of every file, the period, the commit range
//! and the audit seq range; and its verification.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub(crate) const FILE: &str = "MANIFEST.json";

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read(dir: &Path) -> Result<Value> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The file names an existing manifest lists.
pub(crate) fn listed(dir: &Path) -> Result<BTreeSet<String>> {
    let m = read(dir)?;
    let files = m["files"].as_array().context("the manifest has no files")?;
    Ok(files.iter().filter_map(|f| f["path"].as_str().map(str::to_string)).collect())
}

/// Checks a bundle against its `MANIFEST.json`: every listed file exists with the listed size
/// and sha256, nothing else is in the folder, and the period, commit range and audit range are
/// stated. Returns how many files verified; Err names every problem.
pub fn verify_manifest(dir: &Path) -> Result<usize> {
    let m = read(dir)?;
    let mut problems = Vec::new();
    for key in ["period", "commits", "audit"] {
        if !m[key].is_object() {
            problems.push(format!("the manifest does not state its {key}"));
        }
    }
    let Some(files) = m["files"].as_array() else { bail!("the manifest lists no files") };
    let mut names = BTreeSet::new();
    for f in files {
        let Some(name) = f["path"].as_str() else {
            problems.push(format!("an entry without a path: {f}"));
            continue;
        };
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." || name == FILE {
            problems.push(format!("{name:?}: not a file of the bundle"));
            continue;
        }
        names.insert(name.to_string());
        let path = dir.join(name);
        let (bytes, digest) = match hash_file(&path) {
            Ok(x) => x,
            Err(e) => {
                problems.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        if f["bytes"].as_u64() != Some(bytes) {
            problems.push(format!("{name}: {bytes} bytes, the manifest says {}", f["bytes"]));
        }
        if f["sha256"].as_str() != Some(digest.as_str()) {
            problems.push(format!("{name}: sha256 {digest} does not match the manifest's {}", f["sha256"]));
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != FILE && !names.contains(&name) {
            problems.push(format!("{name}: not listed in the manifest"));
        }
    }
    if !problems.is_empty() {
        bail!("the bundle in {} does not verify:\n{}", dir.display(), problems.join("\n"));
    }
    Ok(names.len())
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).context("missing")?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}
