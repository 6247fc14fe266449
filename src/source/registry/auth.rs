//! Getting past a registry's access control, as its `WWW-Authenticate` challenge asks:
//! anonymous first, then HTTP basic with the user's credentials, or a bearer token from the
//! realm the registry names (sent the credentials, if any: public registries hand out
//! anonymous tokens; an identity token is exchanged by OAuth2's refresh-token grant, as
//! the Docker client does). The `Authorization` that worked is kept and reused, so the
//! layer threads of one pull share a single token.

use std::iter::Peekable;
use std::str::Chars;
use std::sync::Mutex;

use serde::Deserialize;

use super::client::{self, HttpClient, HttpResponse};
use super::credentials::{default_docker_config, load_secret, Credentials, Secret};
use super::{RegistryError, RegistryOptions};
use crate::source::RegistryRef;

/// A token answer is a small JSON object.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// Access to one repository: the credentials to offer and the `Authorization` header value
/// that worked last. `Sync`, for the layer threads.
pub(super) struct Authenticator {
    /// `host[:port]` as the reference names it, for error messages.
    registry: String,
    repository: String,
    /// Whether a token realm may be plain HTTP on a host that is not loopback.
    insecure: bool,
    secret: Option<Secret>,
    /// Where the credentials would come from, for error messages.
    config_path: String,
    authorization: Mutex<Option<String>>,
}

impl Authenticator {
    /// Takes the credentials given, or looks those of `reference`'s registry up in the
    /// Docker config (running its credential helper); makes no request to the registry.
    pub(super) fn new(
        reference: &RegistryRef,
        options: &RegistryOptions,
    ) -> Result<Authenticator, RegistryError> {
        let config_path = options.docker_config.clone().or_else(default_docker_config);
        let secret = match (&options.credentials, &config_path) {
            (Some(given), _) => Some(Secret::Password(given.clone())),
            (None, Some(path)) => load_secret(path, &reference.registry)?,
            (None, None) => None,
        };
        Ok(Authenticator {
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            insecure: options.insecure,
            secret,
            config_path: match (&options.credentials, config_path) {
                (Some(_), _) => "--creds".into(),
                (None, Some(path)) => path.display().to_string(),
                (None, None) => "~/.docker/config.json".into(),
            },
            authorization: Mutex::new(None),
        })
    }

    /// The registry's refusal, naming where credentials would go.
    pub(super) fn refused(&self, message: String) -> RegistryError {
        RegistryError::Unauthorized {
            host: self.registry.clone(),
            repository: self.repository.clone(),
            message,
            config: self.config_path.clone(),
        }
    }

    /// One GET with the authorization that worked last; on a 401, answers the challenge
    /// once and retries.
    pub(super) fn get(
        &self,
        client: &HttpClient,
        path: &str,
        accept: Option<&str>,
    ) -> Result<HttpResponse, RegistryError> {
        let cached = self.authorization.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let response = client.get(path, accept, cached.as_deref())?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let Some(authorization) = self.answer(client, &challenges(&response))? else {
            return Ok(response);
        };
        let retried = client.get(path, accept, Some(&authorization))?;
        if retried.status().as_u16() != 401 {
            *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(authorization);
        }
        Ok(retried)
    }

    /// The `Authorization` value answering the registry's challenges, preferring a bearer
    /// token; `None` when there is nothing to answer with (the 401 then stands).
    fn answer(&self, client: &HttpClient, challenges: &[Challenge]) -> Result<Option<String>, RegistryError> {
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, scope } => Some((realm, service, scope)),
            Challenge::Basic => None,
        });
        if let Some((realm, service, scope)) = bearer {
            return self.fetch_token(client, realm, service.as_deref(), scope.as_deref()).map(Some);
        }
        if challenges.contains(&Challenge::Basic) {
            return Ok(self.password().map(Credentials::basic_header));
        }
        Ok(None)
    }

    /// Asks the token realm for a pull token for this repository, sending the credentials
    /// when there are some.
    fn fetch_token(
        &self,
        client: &HttpClient,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        self.check_realm(realm)?;
        let default_scope = format!("repository:{}:pull", self.repository);
        let mut query = vec![("scope", scope.unwrap_or(&default_scope))];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let response = match &self.secret {
            Some(Secret::IdentityToken(refresh_token)) => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                    ("client_id", "diskc"),
                ]);
                client.post_form(realm, &form)
            }
            _ => {
                let basic = self.password().map(Credentials::basic_header);
                client.get_url(realm, &query, basic.as_deref())
            }
        }
        .map_err(|e| self.auth_error(format!("token realm {realm}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(self.refused(format!("token realm answered {status}")));
        }
        let body = client::read_limited(response, MAX_TOKEN_BYTES)
            .map_err(|e| self.auth_error(format!("token realm {realm}: {e}")))?;
        let token = token_from_answer(&body)
            .map_err(|problem| self.auth_error(format!("token realm {realm} {problem}")))?;
        Ok(format!("Bearer {token}"))
    }

    /// A realm must be an http(s) URL, and plain HTTP only on loopback or when the caller
    /// asked for insecure: the credentials travel there.
    fn check_realm(&self, realm: &str) -> Result<(), RegistryError> {
        let realm_is_plain = realm.starts_with("http://");
        if !realm.starts_with("https://") && !realm_is_plain {
            return Err(self.auth_error(format!("token realm {realm:?} is not an http(s) URL")));
        }
        if realm_is_plain && !self.insecure && !realm_host_is_loopback(realm) {
            return Err(
                self.auth_error(format!("token realm {realm} is plain HTTP on a host that is not loopback"))
            );
        }
        Ok(())
    }

    fn password(&self) -> Option<&Credentials> {
        match &self.secret {
            Some(Secret::Password(c)) => Some(c),
            _ => None,
        }
    }

    fn auth_error(&self, problem: String) -> RegistryError {
        RegistryError::Auth { host: self.registry.clone(), problem }
    }
}

#[derive(Debug, Deserialize)]
struct TokenJson {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The token of a realm's answer, which names it `token` or (OAuth2) `access_token`; the
/// error completes "token realm REALM …".
fn token_from_answer(body: &[u8]) -> Result<String, String> {
    let answer: TokenJson = serde_json::from_slice(body).map_err(|e| format!("answered: {e}"))?;
    answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "gave no token".to_string())
}

fn realm_host_is_loopback(realm: &str) -> bool {
    let after = realm.split_once("://").map_or(realm, |(_, r)| r);
    let host = after.split(['/', '?']).next().unwrap_or("");
    client::is_loopback_host(host)
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// The challenges of a 401 answer that this module can answer.
fn challenges(response: &HttpResponse) -> Vec<Challenge> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        .collect()
}

/// Parses one `WWW-Authenticate` value: a scheme, then `key=value` parameters.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_auth_params(rest)?;
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
    } else {
        None
    }
}

/// Comma-separated `key=value` pairs, keys lowercased; `None` when one is malformed.
fn parse_auth_params(text: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return Some(params);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        params.push((key.to_ascii_lowercase(), read_param_value(&mut chars)?));
    }
}

/// A quoted value (backslash escapes; it may hold commas), `None` if unterminated; or a
/// bare one up to the next comma, trimmed.
fn read_param_value(chars: &mut Peekable<Chars<'_>>) -> Option<String> {
    let mut value = String::new();
    if chars.next_if_eq(&'"').is_none() {
        value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        return Some(value.trim().to_string());
    }
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t , service="s\"q""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("s\"q".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn realm_loopback_check() {
        assert!(realm_host_is_loopback("http://127.0.0.1:4000/token"));
        assert!(realm_host_is_loopback("http://localhost/token?x=1"));
        assert!(!realm_host_is_loopback("http://auth.example/token"));
    }
}
