//! Registry credentials from the Docker client's config file, so that a registry the user
//! reached with `docker login` needs no second login for diskc. Only the `auths` entries
//! that `docker login` writes are read (a base64 `auth` of `user:password`, or `username`
//! and `password`); a missing file means anonymous access.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;

/// The hosts `docker login` may have filed Docker Hub's credentials under, its old index
/// address among them.
const DOCKER_HUB_KEYS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Leaves the password out, so that no log or error shows it.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `Authorization` value of HTTP basic authentication.
    pub(super) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// The Docker client's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Reads the credentials for `host` from the config file at `path`; a missing file means
/// anonymous access.
pub(super) fn load_credentials(path: &Path, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let bad = |problem: String| RegistryError::Credentials { path: path.display().to_string(), problem };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    credentials_from_config(&bytes, host).map_err(bad)
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntryJson>,
}

#[derive(Debug, Deserialize)]
struct AuthEntryJson {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Credentials for `host` from a Docker config file's contents; `Ok(None)` when it has
/// none for that host.
fn credentials_from_config(json: &[u8], host: &str) -> Result<Option<Credentials>, String> {
    let config: DockerConfigJson = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let Some((_, entry)) = config.auths.iter().find(|(key, _)| auth_key_names_host(key, host)) else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        return decode_auth(auth, host).map(Some);
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials { username: u.clone(), password: p.clone() })),
        _ => Ok(None),
    }
}

/// Whether an `auths` key is the entry of `host`, Docker Hub's older names included.
fn auth_key_names_host(key: &str, host: &str) -> bool {
    let key = auth_key_host(key);
    key.eq_ignore_ascii_case(host) || (host == "docker.io" && DOCKER_HUB_KEYS.contains(&key))
}

/// The host of an `auths` key: keys are written as `host[:port]`, sometimes with a scheme
/// and a path (`https://index.docker.io/v1/`).
fn auth_key_host(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// An entry's `auth`: base64 of `user:password`.
fn decode_auth(auth: &str, host: &str) -> Result<Credentials, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("the auth of {host} is not base64: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| format!("the auth of {host} is not UTF-8"))?;
    let (username, password) =
        text.split_once(':').ok_or_else(|| format!("the auth of {host} is not user:password"))?;
    Ok(Credentials { username: username.into(), password: password.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials_from_docker_config() {
        let config = br#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "other:1":{"username":"u","password":"p"},
            "empty:1":{}}}"#;
        let c = credentials_from_config(config, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pa:ss"));
        assert_eq!(c.basic_header(), "Basic dXNlcjpwYTpzcw==");
        assert_eq!(credentials_from_config(config, "docker.io").unwrap().unwrap().username, "hub");
        assert_eq!(credentials_from_config(config, "other:1").unwrap().unwrap().password, "p");
        assert_eq!(credentials_from_config(config, "empty:1").unwrap(), None);
        assert_eq!(credentials_from_config(config, "127.0.0.1:5001").unwrap(), None);
        assert!(credentials_from_config(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").is_err());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}
