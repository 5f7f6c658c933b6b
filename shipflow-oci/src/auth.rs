//! Registry credentials and the `WWW-Authenticate` challenges registries answer with.

use std::collections::HashMap;
use std::fmt;

/// A username and password (or token) for a registry.
///
/// The password never shows in `Debug` output, errors or logs:
///
/// ```
/// let c = shipflow_oci::Credentials::basic("ci", "s3cret");
/// assert!(!format!("{c:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
    /// The password is an identity (OAuth2 refresh) token.
    identity_token: bool,
}

impl Credentials {
    /// Basic credentials: used as HTTP basic auth, and to obtain bearer tokens
    /// from registries that ask for them.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            identity_token: false,
        }
    }

    /// An identity token, as `az acr login` and other OAuth2 registries leave in
    /// `config.json` (`identitytoken`): exchanged for bearer tokens with the OAuth2
    /// refresh-token grant, never sent as a password.
    ///
    /// ```
    /// let c = shipflow_oci::Credentials::identity_token("eyJhbGciOi…");
    /// assert!(!format!("{c:?}").contains("eyJ"));
    /// ```
    pub fn identity_token(token: impl Into<String>) -> Self {
        Self {
            username: "<token>".into(),
            password: token.into(),
            identity_token: true,
        }
    }

    /// The identity token, when these credentials are one.
    pub(crate) fn refresh_token(&self) -> Option<&str> {
        self.identity_token.then_some(self.password.as_str())
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("identity_token", &self.identity_token)
            .finish()
    }
}

/// How a registry wants requests authenticated, learned from its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// No authentication needed.
    Anonymous,
    /// HTTP basic auth.
    Basic,
    /// Bearer tokens from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value into a [`Scheme`].
pub(crate) fn parse_challenge(header: &str) -> Option<Scheme> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Scheme::Basic),
        "bearer" => {
            let mut params = parse_params(params);
            Some(Scheme::Bearer {
                realm: params.remove("realm")?,
                service: params.remove("service"),
                scope: params.remove("scope"),
            })
        }
        _ => None,
    }
}

/// `key="value", key2=value2` → map; quoted values may hold commas.
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The token endpoint's answer (Docker token spec: `token`, or OAuth's `access_token`).
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) token: Option<String>,
    pub(crate) access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_commas_in_scope() {
        let scheme = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/api:pull,push""#,
        );
        assert_eq!(
            scheme,
            Some(Scheme::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:team/api:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_rejects_unknown() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Scheme::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }
}
