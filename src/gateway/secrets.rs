//! Resolves `${secret:NAME}` references into the credentials the gateway sends upstream.
//!
//! Secrets come from `--secrets-dir DIR` (file `DIR/NAME`, one trailing newline trimmed) or the
//! environment (`GATEHOUSE_SECRET_NAME`, upper-cased, `-` and `.` → `_`). They never live in the
//! repository or in a snapshot; binding is a separate step so that `check`, `test` and `eval`
//! never need one. Errors name the secret, never its value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::policy::snapshot::{Part, Server, Snapshot, Template};

/// Where secrets are read from.
#[derive(Clone, Debug, Default)]
pub struct SecretSource {
    pub dir: Option<PathBuf>,
}

/// One server's credentials, resolved.
#[derive(Default)]
pub struct Bound {
    /// Headers added to every upstream HTTP request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Environment of a stdio child (on top of a minimal PATH/HOME/LANG).
    pub env: Vec<(String, String)>,
}

/// Server name → its resolved credentials.
pub type BoundSecrets = HashMap<String, Arc<Bound>>;

// === impl Bound ===

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Bound").field("headers", &headers).field("env", &env).finish()
    }
}

// === impl SecretSource ===

impl SecretSource {
    /// The value of secret `name`, or an error that names it.
    pub fn resolve(&self, name: &str) -> Result<String, String> {
        if let Some(dir) = &self.dir {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(mut v) => {
                    if v.ends_with('\n') {
                        v.pop();
                        if v.ends_with('\r') {
                            v.pop();
                        }
                    }
                    return Ok(v);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("secret {name:?}: cannot read {}: {e}", dir.join(name).display())),
            }
        }
        let var = env_name(name);
        std::env::var(&var).map_err(|_| {
            let file = self.dir.as_ref().map(|d| format!("{} or ", d.join(name).display())).unwrap_or_default();
            format!("secret {name:?} is not set: provide {file}the environment variable {var}")
        })
    }

    fn render(&self, t: &Template) -> Result<String, String> {
        let mut out = String::new();
        for p in &t.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Secret(name) => out.push_str(&self.resolve(name)?),
            }
        }
        Ok(out)
    }
}

/// `github-token` → `GATEHOUSE_SECRET_GITHUB_TOKEN`.
pub fn env_name(name: &str) -> String {
    let upper: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("GATEHOUSE_SECRET_{upper}")
}

/// Resolves the credentials of every server. Err lists every secret that could not be
/// resolved, as `servers/NAME.yaml: …`.
pub fn bind(snapshot: &Snapshot, source: &SecretSource) -> Result<BoundSecrets, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for name in snapshot.server_names() {
        match bind_server(&snapshot.servers[name], source) {
            Ok(bound) => {
                out.insert(name.to_string(), Arc::new(bound));
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Resolves the credentials of one server (what `gatehouse scan --server` needs: the other
/// servers' secrets may be absent). Err lists every secret that could not be resolved.
pub fn bind_server(server: &Server, source: &SecretSource) -> Result<Bound, Vec<String>> {
    let mut bound = Bound::default();
    let mut errors = Vec::new();
    for (k, t) in &server.credentials.headers {
        match source.render(t) {
            Ok(v) => match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                (Ok(h), Ok(mut v)) => {
                    v.set_sensitive(true);
                    bound.headers.push((h, v));
                }
                _ => errors.push(format!("{}: credentials.headers.{k}: the secret value is not a valid header value", server.file)),
            },
            Err(e) => errors.push(format!("{}: {e}", server.file)),
        }
    }
    for (k, t) in &server.credentials.env {
        match source.render(t) {
            Ok(v) => bound.env.push((k.clone(), v)),
            Err(e) => errors.push(format!("{}: {e}", server.file)),
        }
    }
    if errors.is_empty() { Ok(bound) } else { Err(errors) }
}
