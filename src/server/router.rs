//! Request routing: `(method, path)` → a closed [`Route`] enum. Unknown paths are 404, known
//! paths with the wrong method are 405 with an `Allow` list. Path segments are percent-decoded
//! once here; handlers get plain strings.

use super::ingress::IngressPath;
use crate::model::ConnectorKind;

/// Body cap of control-plane requests.
pub const CONTROL_BODY_LIMIT: usize = 1024 * 1024;

/// Every route the daemon serves (SPEC §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    /// `POST /v1/connectors/{kind}/{name}[/...]` for an endpoint in the ingress table
    /// ([`super::ingress::ENDPOINTS`]).
    Ingress {
        kind: ConnectorKind,
        name: String,
        path: IngressPath,
    },
    /// `GET /v1/connectors/external/{name}/credentials/{env_key}`: a sidecar's credential
    /// lease fetch (SPEC §10.7); authenticated by the lease token, not the admin token.
    CredentialLease {
        name: String,
        env_key: String,
    },
    /// `GET /v1/connectors/external/{name}/deliveries/{delivery_id}/assets/{asset_id}/raw`
    /// (shared-token auth, not the admin token; `server::assets`).
    ExternalAsset {
        name: String,
        delivery_id: String,
        asset_id: String,
    },
    /// `PUT /v1/sessions/{id}`
    PutSession {
        id: String,
    },
    /// `GET /v1/sessions/{id}`
    GetSession {
        id: String,
    },
    /// `PUT /v1/sessions/{id}/reply-targets`
    PutSessionReplyTargets {
        id: String,
    },
    /// `GET /v1/runs`
    ListRuns,
    /// `GET /v1/runs/{id}`
    GetRun {
        id: String,
    },
    /// `POST /v1/runs/claim`
    ClaimRun,
    /// `POST /v1/runs/{id}/output`
    RunOutput {
        id: String,
    },
    /// `POST /v1/runs/{id}/complete`
    CompleteRun {
        id: String,
    },
    /// `POST /v1/runs/{id}/fail`
    FailRun {
        id: String,
    },
    /// `GET /v1/receipts`
    ListReceipts,
    /// `GET /v1/deliveries`
    ListDeliveries,
    /// `GET /v1/deliveries/dead-letter`
    DeadLetters,
    /// `GET /v1/deliveries/{id}`
    GetDelivery {
        id: String,
    },
    /// `POST /v1/deliveries/{id}/replay[?force=true]`
    ReplayDelivery {
        id: String,
    },
    /// `POST /v1/deliveries/{id}/resolve`
    ResolveDelivery {
        id: String,
    },
    /// `POST /v1/deliveries/replay-bulk`
    ReplayBulk,
    /// `POST /v1/deliveries/backpressure/reset`
    ResetBackpressure,
    /// `GET /v1/runtime/connectors`
    RuntimeConnectors,
    /// `GET|PUT|DELETE /v1/runtime/connectors/{kind}/{name}`
    RuntimeConnector {
        kind: String,
        name: String,
    },
    /// `GET /v1/runtime/secrets`
    RuntimeSecrets,
    /// `PUT|DELETE /v1/runtime/secrets/{ref}`
    RuntimeSecret {
        secret_ref: String,
    },
}

impl Route {
    /// The route template for access logs and metrics labels (never the raw path).
    pub fn template(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Ingress { kind, path, .. } => {
                super::ingress::endpoint(*kind, *path).map_or("(unmatched)", |e| e.template)
            }
            Route::CredentialLease { .. } => "/v1/connectors/external/{name}/credentials/{env_key}",
            Route::ExternalAsset { .. } => {
                "/v1/connectors/external/{name}/deliveries/{delivery_id}/assets/{asset_id}/raw"
            }
            Route::PutSession { .. } | Route::GetSession { .. } => "/v1/sessions/{id}",
            Route::PutSessionReplyTargets { .. } => "/v1/sessions/{id}/reply-targets",
            Route::ListRuns => "/v1/runs",
            Route::GetRun { .. } => "/v1/runs/{id}",
            Route::ClaimRun => "/v1/runs/claim",
            Route::RunOutput { .. } => "/v1/runs/{id}/output",
            Route::CompleteRun { .. } => "/v1/runs/{id}/complete",
            Route::FailRun { .. } => "/v1/runs/{id}/fail",
            Route::ListReceipts => "/v1/receipts",
            Route::ListDeliveries => "/v1/deliveries",
            Route::DeadLetters => "/v1/deliveries/dead-letter",
            Route::GetDelivery { .. } => "/v1/deliveries/{id}",
            Route::ReplayDelivery { .. } => "/v1/deliveries/{id}/replay",
            Route::ResolveDelivery { .. } => "/v1/deliveries/{id}/resolve",
            Route::ReplayBulk => "/v1/deliveries/replay-bulk",
            Route::ResetBackpressure => "/v1/deliveries/backpressure/reset",
            Route::RuntimeConnectors => "/v1/runtime/connectors",
            Route::RuntimeConnector { .. } => "/v1/runtime/connectors/{kind}/{name}",
            Route::RuntimeSecrets => "/v1/runtime/secrets",
            Route::RuntimeSecret { .. } => "/v1/runtime/secrets/{ref}",
        }
    }

    /// True for control-plane routes, which need the admin token (SPEC §5.2).
    pub fn needs_admin(&self) -> bool {
        !matches!(
            self,
            Route::Healthz
                | Route::Readyz
                | Route::Ingress { .. }
                | Route::CredentialLease { .. }
                | Route::ExternalAsset { .. }
        )
    }

    /// The largest request body this route reads (SPEC §5); larger bodies answer 413.
    pub fn body_limit(&self) -> usize {
        match self {
            Route::Ingress { kind, path, .. } => {
                super::ingress::endpoint(*kind, *path).map_or(CONTROL_BODY_LIMIT, |e| e.body_limit)
            }
            _ => CONTROL_BODY_LIMIT,
        }
    }
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    /// The path exists for these methods only.
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Matches a request. `path` is the request target without the query string. `HEAD` matches
/// every `GET` route (the answer is the `GET` one; the listener sends its head only).
pub fn route(method: &str, path: &str) -> Result<Route, NoRoute> {
    let method = if method == "HEAD" { "GET" } else { method };
    let segments: Vec<String> = match path.strip_prefix('/') {
        Some(rest) => rest
            .split('/')
            .map(percent_decode)
            .collect::<Option<_>>()
            .ok_or(NoRoute::NotFound)?,
        None => return Err(NoRoute::NotFound),
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let one = |m: &str, allow: &'static str, r: Route| {
        if method == m {
            Ok(r)
        } else {
            Err(NoRoute::MethodNotAllowed { allow })
        }
    };
    let nonempty = |s: &str| !s.is_empty();
    match segs.as_slice() {
        ["healthz"] => one("GET", "GET", Route::Healthz),
        ["readyz"] => one("GET", "GET", Route::Readyz),
        ["metrics"] => one("GET", "GET", Route::Metrics),
        ["v1", "connectors", "external", name, "credentials", key]
            if nonempty(name) && nonempty(key) =>
        {
            one(
                "GET",
                "GET",
                Route::CredentialLease {
                    name: name.to_string(),
                    env_key: key.to_string(),
                },
            )
        }
        ["v1", "runtime", "connectors"] => one("GET", "GET", Route::RuntimeConnectors),
        ["v1", "runtime", "connectors", kind, name] if nonempty(kind) && nonempty(name) => {
            match method {
                "GET" | "PUT" | "DELETE" => Ok(Route::RuntimeConnector {
                    kind: kind.to_string(),
                    name: name.to_string(),
                }),
                _ => Err(NoRoute::MethodNotAllowed {
                    allow: "GET, PUT, DELETE",
                }),
            }
        }
        ["v1", "runtime", "secrets"] => one("GET", "GET", Route::RuntimeSecrets),
        ["v1", "runtime", "secrets", r] if nonempty(r) => match method {
            "PUT" | "DELETE" => Ok(Route::RuntimeSecret {
                secret_ref: r.to_string(),
            }),
            _ => Err(NoRoute::MethodNotAllowed {
                allow: "PUT, DELETE",
            }),
        },
        ["v1", "connectors", "external", name, "deliveries", delivery_id, "assets", asset_id, "raw"]
            if nonempty(name) && nonempty(delivery_id) && nonempty(asset_id) =>
        {
            one(
                "GET",
                "GET",
                Route::ExternalAsset {
                    name: name.to_string(),
                    delivery_id: delivery_id.to_string(),
                    asset_id: asset_id.to_string(),
                },
            )
        }
        ["v1", "connectors", kind, name, rest @ ..] if nonempty(name) => {
            let kind = kind
                .parse::<ConnectorKind>()
                .map_err(|_| NoRoute::NotFound)?;
            let path = IngressPath::parse(rest)
                .filter(|path| super::ingress::endpoint(kind, *path).is_some())
                .ok_or(NoRoute::NotFound)?;
            one(
                "POST",
                "POST",
                Route::Ingress {
                    kind,
                    name: name.to_string(),
                    path,
                },
            )
        }
        ["v1", "sessions", id] if nonempty(id) => match method {
            "PUT" => Ok(Route::PutSession { id: id.to_string() }),
            "GET" => Ok(Route::GetSession { id: id.to_string() }),
            _ => Err(NoRoute::MethodNotAllowed { allow: "GET, PUT" }),
        },
        ["v1", "sessions", id, "reply-targets"] if nonempty(id) => one(
            "PUT",
            "PUT",
            Route::PutSessionReplyTargets { id: id.to_string() },
        ),
        ["v1", "runs"] => one("GET", "GET", Route::ListRuns),
        ["v1", "runs", "claim"] => one("POST", "POST", Route::ClaimRun),
        ["v1", "runs", id] if nonempty(id) => {
            one("GET", "GET", Route::GetRun { id: id.to_string() })
        }
        ["v1", "runs", id, "output"] if nonempty(id) => {
            one("POST", "POST", Route::RunOutput { id: id.to_string() })
        }
        ["v1", "runs", id, "complete"] if nonempty(id) => {
            one("POST", "POST", Route::CompleteRun { id: id.to_string() })
        }
        ["v1", "runs", id, "fail"] if nonempty(id) => {
            one("POST", "POST", Route::FailRun { id: id.to_string() })
        }
        ["v1", "receipts"] => one("GET", "GET", Route::ListReceipts),
        ["v1", "deliveries"] => one("GET", "GET", Route::ListDeliveries),
        ["v1", "deliveries", "dead-letter"] => one("GET", "GET", Route::DeadLetters),
        ["v1", "deliveries", "replay-bulk"] => one("POST", "POST", Route::ReplayBulk),
        ["v1", "deliveries", "backpressure", "reset"] => {
            one("POST", "POST", Route::ResetBackpressure)
        }
        ["v1", "deliveries", id] if nonempty(id) => {
            one("GET", "GET", Route::GetDelivery { id: id.to_string() })
        }
        ["v1", "deliveries", id, "replay"] if nonempty(id) => {
            one("POST", "POST", Route::ReplayDelivery { id: id.to_string() })
        }
        ["v1", "deliveries", id, "resolve"] if nonempty(id) => one(
            "POST",
            "POST",
            Route::ResolveDelivery { id: id.to_string() },
        ),
        _ => Err(NoRoute::NotFound),
    }
}

/// Decodes `%XX` escapes in one path segment; `None` for malformed escapes or non-UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a query string into decoded `(key, value)` pairs (`+` is a space). Malformed escapes
/// yield `None` so the caller can answer 400.
pub fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, path: &str, expected: Result<Route, NoRoute>) {
        assert_eq!(route(method, path), expected, "{method} {path}");
    }

    #[test]
    fn routes() {
        check("GET", "/healthz", Ok(Route::Healthz));
        check("HEAD", "/healthz", Ok(Route::Healthz));
        check("HEAD", "/v1/runs", Ok(Route::ListRuns));
        check(
            "POST",
            "/v1/connectors/http/orders",
            Ok(Route::Ingress {
                kind: ConnectorKind::Http,
                name: "orders".into(),
                path: IngressPath::Webhook,
            }),
        );
        check(
            "POST",
            "/v1/connectors/external/d/events",
            Ok(Route::Ingress {
                kind: ConnectorKind::External,
                name: "d".into(),
                path: IngressPath::Events,
            }),
        );
        check(
            "POST",
            "/v1/connectors/external/d/events/batch",
            Ok(Route::Ingress {
                kind: ConnectorKind::External,
                name: "d".into(),
                path: IngressPath::EventsBatch,
            }),
        );
        check(
            "GET",
            "/v1/connectors/external/d/events",
            Err(NoRoute::MethodNotAllowed { allow: "POST" }),
        );
        // External connectors have no webhook; http connectors no event routes.
        check("POST", "/v1/connectors/external/d", Err(NoRoute::NotFound));
        check(
            "POST",
            "/v1/connectors/external/d/other",
            Err(NoRoute::NotFound),
        );
        check(
            "POST",
            "/v1/connectors/http/orders/events",
            Err(NoRoute::NotFound),
        );
        // Kinds this build does not serve yet have no route.
        check(
            "POST",
            "/v1/connectors/telegram/x",
            Ok(Route::Ingress {
                kind: ConnectorKind::Telegram,
                name: "x".into(),
                path: IngressPath::Webhook,
            }),
        );
        check(
            "POST",
            "/v1/connectors/slack/x",
            Ok(Route::Ingress {
                kind: ConnectorKind::Slack,
                name: "x".into(),
                path: IngressPath::Webhook,
            }),
        );
        check("POST", "/v1/connectors/nope/x", Err(NoRoute::NotFound));
        check(
            "GET",
            "/v1/connectors/http/orders",
            Err(NoRoute::MethodNotAllowed { allow: "POST" }),
        );
        check("POST", "/v1/connectors/http/", Err(NoRoute::NotFound));
        check("POST", "/v1/runs/claim", Ok(Route::ClaimRun));
        check(
            "GET",
            "/v1/runs/run_1",
            Ok(Route::GetRun { id: "run_1".into() }),
        );
        check(
            "POST",
            "/v1/runs/run_1/output",
            Ok(Route::RunOutput { id: "run_1".into() }),
        );
        check(
            "GET",
            "/v1/sessions/http%3Aorders%3Aab",
            Ok(Route::GetSession {
                id: "http:orders:ab".into(),
            }),
        );
        check(
            "DELETE",
            "/v1/sessions/x",
            Err(NoRoute::MethodNotAllowed { allow: "GET, PUT" }),
        );
        check("GET", "/v1/sessions/%zz", Err(NoRoute::NotFound));
        check("GET", "/v1/deliveries/dead-letter", Ok(Route::DeadLetters));
        check(
            "GET",
            "/v1/connectors/external/d%2Dm/credentials/BOT_TOKEN",
            Ok(Route::CredentialLease {
                name: "d-m".into(),
                env_key: "BOT_TOKEN".into(),
            }),
        );
        check(
            "POST",
            "/v1/connectors/external/d/credentials/BOT_TOKEN",
            Err(NoRoute::MethodNotAllowed { allow: "GET" }),
        );
        check(
            "GET",
            "/v1/connectors/external/d/credentials/",
            Err(NoRoute::NotFound),
        );
        check("POST", "/v1/deliveries/replay-bulk", Ok(Route::ReplayBulk));
        check(
            "POST",
            "/v1/deliveries/backpressure/reset",
            Ok(Route::ResetBackpressure),
        );
        check(
            "POST",
            "/v1/deliveries/dlv_1/replay",
            Ok(Route::ReplayDelivery { id: "dlv_1".into() }),
        );
        check(
            "GET",
            "/v1/deliveries/dlv_1",
            Ok(Route::GetDelivery { id: "dlv_1".into() }),
        );
        check(
            "GET",
            "/v1/connectors/external/sc/deliveries/dlv_1/assets/asset_1/raw",
            Ok(Route::ExternalAsset {
                name: "sc".into(),
                delivery_id: "dlv_1".into(),
                asset_id: "asset_1".into(),
            }),
        );
        check(
            "POST",
            "/v1/connectors/external/sc/deliveries/dlv_1/assets/asset_1/raw",
            Err(NoRoute::MethodNotAllowed { allow: "GET" }),
        );
        check(
            "GET",
            "/v1/connectors/external/sc/deliveries//assets/asset_1/raw",
            Err(NoRoute::NotFound),
        );
        assert!(!route(
            "GET",
            "/v1/connectors/external/sc/deliveries/d/assets/a/raw"
        )
        .unwrap()
        .needs_admin());
        check("GET", "/nope", Err(NoRoute::NotFound));
        check("GET", "nope", Err(NoRoute::NotFound));
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_pairs("a=1&b=x%20y&c=p+q&flag").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "p q".into()),
                ("flag".into(), "".into())
            ]
        );
        assert!(query_pairs("a=%G1").is_none());
    }
}
