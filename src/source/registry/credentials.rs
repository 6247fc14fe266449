//! Registry credentials as the Docker client finds them, so that a registry the user
//! reached with `docker login` needs no second login for diskc: the config file's
//! `credHelpers` (a `docker-credential-NAME` program per registry), its `auths` entries (a
//! base64 `auth`, `username` and `password`, or an `identitytoken`), then its `credsStore` — read by the
//! `docker_credential` crate, which runs the helpers too. A missing file means anonymous
//! access; `--creds USER:PASS` on the command line comes before all of it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};

use super::RegistryError;

/// The key `docker login` files Docker Hub's credentials under.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

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

/// What the Docker config holds for a registry.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Secret {
    Password(Credentials),
    /// An OAuth2 refresh token (`docker login` to a registry whose token server issues
    /// one): exchanged at the token realm for an access token.
    IdentityToken(String),
}

/// Leaves the secret out.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(c) => c.fmt(f),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(..)"),
        }
    }
}

/// `USER:PASS`, as `--creds` takes it (the password may hold colons; an empty user may not
/// be).
pub fn parse_creds(text: &str) -> Result<Credentials, String> {
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Ok(Credentials { username: user.into(), password: password.into() })
        }
        _ => Err("expected USER:PASSWORD".into()),
    }
}

/// Reads the secret for `host` through the Docker config file at `path`, running the
/// credential helper it names; a missing file, or a helper that knows no credentials for
/// the host, means anonymous access.
pub(super) fn load_secret(path: &Path, host: &str) -> Result<Option<Secret>, RegistryError> {
    let bad = |problem: String| RegistryError::Credentials { path: path.display().to_string(), problem };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let server = if host == "docker.io" { DOCKER_HUB_SERVER } else { host };
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Secret::Password(Credentials { username, password })))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Secret::IdentityToken(token))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(e) => helper_answer(e, host).map_err(bad),
    }
}

/// What a failed look-up means: a helper that has nothing for the host says so (Docker's
/// helpers print "credentials not found"), which is no credentials; anything else is an
/// error worth one line.
fn helper_answer(error: CredentialRetrievalError, host: &str) -> Result<Option<Secret>, String> {
    match error {
        CredentialRetrievalError::HelperFailure { helper, stdout, stderr } => {
            if stdout.contains("credentials not found") {
                return Ok(None);
            }
            let said = [stderr.trim(), stdout.trim()].into_iter().find(|s| !s.is_empty()).unwrap_or("");
            Err(format!("{helper} get {host} failed: {}", said.lines().next().unwrap_or("no message")))
        }
        CredentialRetrievalError::HelperCommunicationError => Err(format!(
            "cannot run the credential helper the file names for {host} (docker-credential-NAME on PATH)"
        )),
        CredentialRetrievalError::MalformedHelperResponse => {
            Err(format!("the credential helper for {host} answered something other than its JSON"))
        }
        CredentialRetrievalError::CredentialDecodingError => {
            Err(format!("the auth of {host} is not base64 of user:password"))
        }
        CredentialRetrievalError::CredentialMismatchError => {
            Err(format!("the auth of {host} and its username and password disagree"))
        }
        CredentialRetrievalError::ConfigReadError => Err("not a Docker config file (invalid JSON)".into()),
        other => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(config: &str, host: &str) -> Result<Option<Secret>, RegistryError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        load_secret(&path, host)
    }

    fn password(user: &str, password: &str) -> Option<Secret> {
        Some(Secret::Password(Credentials { username: user.into(), password: password.into() }))
    }

    #[test]
    fn reads_auths_and_identity_tokens_from_docker_config() {
        let config = r#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "tokens:1":{"identitytoken":"refresh-me"},
            "other:1":{"username":"u","password":"p"},
            "empty:1":{}}}"#;
        assert_eq!(secret(config, "127.0.0.1:5000").unwrap(), password("user", "pa:ss"));
        assert_eq!(secret(config, "docker.io").unwrap(), password("hub", "secret"));
        assert_eq!(secret(config, "tokens:1").unwrap(), Some(Secret::IdentityToken("refresh-me".into())));
        assert_eq!(secret(config, "other:1").unwrap(), password("u", "p"));
        assert_eq!(secret(config, "127.0.0.1:5001").unwrap(), None);
        assert!(secret(r#"{"auths":{"h":{"auth":"!!"}}}"#, "h").unwrap_err().to_string().contains("base64"));
        assert!(secret("{", "h").unwrap_err().to_string().contains("invalid JSON"));
        assert_eq!(load_secret(Path::new("/nonexistent/diskc/config.json"), "h").unwrap(), None);
        let c = Credentials { username: "user".into(), password: "pa:ss".into() };
        assert_eq!(c.basic_header(), "Basic dXNlcjpwYTpzcw==");
        assert!(!format!("{c:?}{:?}", Secret::IdentityToken("refresh-me".into())).contains("pa:ss"));
        assert!(!format!("{:?}", Secret::IdentityToken("refresh-me".into())).contains("refresh-me"));
    }

    #[test]
    fn creds_flag_takes_user_colon_password() {
        let c = parse_creds("ci:p:w").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("ci", "p:w"));
        assert!(parse_creds("nocolon").is_err() && parse_creds(":pw").is_err());
    }
}
