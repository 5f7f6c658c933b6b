//! Auth and tokens: the ping that learns a registry's scheme, the challenges of
//! its 401s, the `Authorization` of each request, bearer tokens, credentials.

use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use shipflow_core::{Context, ImageRef};

use super::transport::{
    Body, Call, DOCUMENT_LIMIT, classify, lock, read_limited, redacted, registry_error,
};
use super::{RegistryClient, Token};
use crate::auth::{Credentials, Scheme, TokenResponse, parse_challenge};
use crate::error::{ConnectFailure, OciError, Step};

impl RegistryClient {
    /// `GET /v2/`: checks the registry answers the distribution API and learns how
    /// it wants requests authenticated.
    pub async fn ping(&self, reference: &ImageRef, ctx: &Context) -> Result<(), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call::new(reference, false, &requests, ctx);
        self.ping_call(&call).await
    }

    /// Records the scheme a 401's challenge asks for. Returns whether a retry can
    /// do better (the scheme changed, or a token can be fetched).
    pub(super) fn learn_challenge(&self, reference: &ImageRef, headers: &HeaderMap) -> bool {
        let Some(scheme) = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return false;
        };
        let registry = reference.registry().to_owned();
        // Once a registry asked for bearer tokens, a later Basic challenge does not
        // make this client send the password on every request (as containerd's
        // authorizer keeps the strongest scheme a host offered).
        if scheme == Scheme::Basic
            && matches!(
                lock(&self.inner.schemes).get(&registry),
                Some(Scheme::Bearer { .. })
            )
        {
            tracing::debug!(%registry, "ignoring a Basic challenge from a registry that asked for bearer tokens");
            return false;
        }
        tracing::debug!(%registry, ?scheme, "learnt the registry's auth scheme");
        let can_retry = match &scheme {
            Scheme::Basic => matches!(self.credentials_for(reference.registry()), Ok(Some(_))),
            Scheme::Bearer { .. } => true,
            Scheme::Anonymous => false,
        };
        // A fresh challenge invalidates the tokens we hold for this registry.
        lock(&self.inner.tokens).retain(|(r, _), _| r != &registry);
        lock(&self.inner.schemes).insert(registry, scheme);
        can_retry
    }

    /// Adds the Authorization header the registry's scheme asks for.
    pub(super) async fn authorize(
        &self,
        call: &Call<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, OciError> {
        let scheme = lock(&self.inner.schemes)
            .get(call.reference.registry())
            .cloned()
            .unwrap_or(Scheme::Anonymous);
        match scheme {
            Scheme::Anonymous => Ok(request),
            Scheme::Basic => Ok(match self.credentials_for(call.reference.registry())? {
                Some(c) => request.basic_auth(c.username(), Some(c.password())),
                None => request,
            }),
            Scheme::Bearer { realm, service, .. } => {
                let scopes = call.scopes();
                // One token per set of scopes: a mount's token (which also reads
                // the source) is not the plain push token of the target.
                let key = (call.reference.registry().to_owned(), scopes.join(" "));
                let cached = lock(&self.inner.tokens).get(&key).cloned();
                let token = match cached {
                    Some(token) => token,
                    None => {
                        let token = self
                            .fetch_token(call, &realm, service.as_deref(), &scopes)
                            .await?;
                        lock(&self.inner.tokens).insert(key, token.clone());
                        token
                    }
                };
                Ok(request.bearer_auth(&token.0))
            }
        }
    }

    pub(super) async fn fetch_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token, OciError> {
        let protocol = |reason: String| OciError::Protocol {
            reference: call.name(),
            step: Step::Auth,
            reason,
        };
        let mut url =
            Url::parse(realm).map_err(|e| protocol(format!("token realm {realm:?}: {e}")))?;
        // The credentials go to the realm the registry named, never over plain
        // HTTP when the registry itself is on HTTPS.
        self.check_no_downgrade(call, Step::Auth, &url)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            // One `scope` parameter per scope, as Docker sends them.
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let credentials = self.credentials_for(call.reference.registry())?;
        let http = self.endpoint(call.reference.registry())?.http;
        tracing::debug!(reference = %call.reference, realm = %redacted(&url), ?scopes, with_credentials = credentials.is_some(), "fetching a bearer token");
        let request = match credentials.as_ref().and_then(|c| c.refresh_token()) {
            // OAuth2: the identity token is exchanged in a form POST, never sent as a
            // password (Docker does the same).
            Some(refresh_token) => {
                let mut form = Url::parse("form:").map_err(|e| protocol(e.to_string()))?;
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", "shipflow")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("service", service.unwrap_or_default())
                    .append_pair("scope", &scopes.join(" "));
                url.set_query(None);
                http.post(url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.query().unwrap_or_default().to_owned())
            }
            None => {
                let mut request = http.get(url);
                if let Some(c) = &credentials {
                    request = request.basic_auth(c.username(), Some(c.password()));
                }
                request
            }
        };
        call.requests.fetch_add(1, Ordering::Relaxed);
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => {
                let failure = classify(&source);
                return Err(self
                    .connect_error(call, Step::Auth, 1, failure, source)
                    .await);
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED
            || response.status() == StatusCode::FORBIDDEN
        {
            let (code, message) = registry_error(response).await;
            return Err(OciError::Unauthorized {
                reference: call.name(),
                step: Step::Auth,
                username: self.username(call.reference.registry()),
                code,
                message,
            });
        }
        if !response.status().is_success() {
            return Err(self.failure(call, Step::Auth, response).await);
        }
        let bytes =
            read_limited(call, Step::Auth, "token answer", response, DOCUMENT_LIMIT).await?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| protocol(format!("token response: {e}")))?;
        body.token
            .or(body.access_token)
            .map(Token)
            .ok_or_else(|| protocol("token response has neither token nor access_token".into()))
    }

    pub(super) fn username(&self, registry: &str) -> Option<String> {
        self.credentials_for(registry)
            .ok()
            .flatten()
            .map(|c| c.username().to_owned())
    }

    /// The credentials for `registry`: the explicit ones, else the docker config's
    /// (looked up once per registry; a credential helper runs at most once).
    pub(super) fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, OciError> {
        let canonical = crate::docker_config::canonical_registry(registry);
        if let Some(explicit) = self.inner.config.credentials.get(&canonical) {
            return Ok(Some(explicit.clone()));
        }
        if let Some(found) = lock(&self.inner.found_credentials).get(registry) {
            return Ok(found.clone());
        }
        // The first file that knows the registry gives its credentials.
        let mut found = None;
        for config in &self.inner.docker_configs {
            found = config.credentials(registry)?;
            if found.is_some() {
                tracing::debug!(%registry, file = ?config.path(), "credentials from a credential file");
                break;
            }
        }
        lock(&self.inner.found_credentials).insert(registry.to_owned(), found.clone());
        Ok(found)
    }

    pub(super) async fn ping_call(&self, call: &Call<'_>) -> Result<(), OciError> {
        let registry = call.reference.registry();
        let ping_url = |client: &Self| {
            Url::parse(&format!("{}/v2/", client.base_url(call.reference))).map_err(|e| {
                OciError::Protocol {
                    reference: call.name(),
                    step: Step::Ping,
                    reason: e.to_string(),
                }
            })
        };
        let get = |url| {
            self.send(
                call,
                Step::Ping,
                Method::GET,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
        };
        let probe = self.may_use_plain_http(call.reference) && !self.endpoint(registry)?.plain_http;
        let response = if probe {
            // HTTPS first, once; plain HTTP only when the registry does not speak
            // TLS (as Docker does for its insecure registries, loopback included).
            // A certificate the trust rejects is reported, not stepped around.
            match get(ping_url(self)?).await {
                Err(OciError::Connect {
                    failure: ConnectFailure::Tls | ConnectFailure::Other,
                    attempts,
                    ..
                }) => {
                    tracing::debug!(%registry, "the registry does not speak TLS: using plain HTTP");
                    // The attempts never became HTTP requests.
                    call.requests.fetch_sub(attempts, Ordering::Relaxed);
                    self.use_plain_http(registry);
                    get(ping_url(self)?).await?
                }
                other => other?,
            }
        } else {
            get(ping_url(self)?).await?
        };
        match response.status() {
            s if s.is_success() => {
                lock(&self.inner.schemes)
                    .entry(call.reference.registry().to_owned())
                    .or_insert(Scheme::Anonymous);
                Ok(())
            }
            _ => Err(self.failure(call, Step::Ping, response).await),
        }
    }

    /// Pings the registry once per client, so that the first real request already
    /// carries the right auth.
    pub(super) async fn ensure_pinged(&self, call: &Call<'_>) -> Result<(), OciError> {
        if lock(&self.inner.schemes).contains_key(call.reference.registry()) {
            return Ok(());
        }
        self.ping_call(call).await
    }
}
