//! The sidecar asset route (SPEC §5.1):
//! `GET /v1/connectors/external/{name}/deliveries/{delivery_id}/assets/{asset_id}/raw`, where a
//! sidecar downloads an asset named in a delivery's `artifacts` (their `download_path`).
//!
//! Authentication is the connector's shared token (`Authorization: Bearer`, the previous value
//! still verifies during a rotation's grace window), compared in constant time; a connector
//! without a shared token (`allow_unauthenticated_ingress`) serves it without one, as its
//! ingress does. The answer is:
//! - 404 `connector_not_found` for a connector that is not configured (before any auth check,
//!   as ingress);
//! - 401 `unauthorized` for a missing or wrong token of an existing connector;
//! - 404 `asset_not_found` unless the delivery is open (`pending` or `retrying`), its target is
//!   this external connector, and its output references the asset — the same answer for every
//!   one of these, so the route tells a caller nothing about other connectors' deliveries;
//! - 200 with the raw bytes and the asset's media type.

use super::{response, ApiRequest, ApiResponse, RequestCtx, Route};
use crate::model::now_ms;
use crate::model::reply::TargetAddress;
use crate::secrets::constant_time_eq;

/// Serves [`Route::ExternalAsset`].
pub fn raw(ctx: &RequestCtx<'_>, route: &Route, req: &ApiRequest) -> ApiResponse {
    let Route::ExternalAsset {
        name,
        delivery_id,
        asset_id,
    } = route
    else {
        return ApiResponse::problem(404, "not_found", "no such route");
    };
    let set = ctx.app.connectors();
    let Some(runtime) = set.external.get(name) else {
        return ApiResponse::problem(
            404,
            "connector_not_found",
            format!("external connector `{name}` is not configured"),
        );
    };
    if let Some(token) = &runtime.shared_token {
        let presented = req
            .header_values("authorization")
            .first()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, value)| value.trim().to_string());
        let ok = presented.is_some_and(|p| {
            token
                .candidates(now_ms())
                .iter()
                .any(|c| constant_time_eq(p.as_bytes(), c))
        });
        if !ok {
            return ApiResponse::problem(
                401,
                "unauthorized",
                format!(
                    "the asset route of external connector `{name}` needs \
                     `Authorization: Bearer <shared_token>`"
                ),
            )
            .with_header("WWW-Authenticate", "Bearer");
        }
    }
    let found = match ctx.store.open_delivery_asset(delivery_id, asset_id) {
        Ok(found) => found,
        Err(e) => return response::store_error(&ctx.app.out, route.template(), &e),
    };
    let for_this_connector = found.filter(
        |f| matches!(f.target.parsed(), Ok(TargetAddress::External(a)) if a.connector == *name),
    );
    match for_this_connector {
        Some(found) => ApiResponse {
            status: 200,
            content_type: "application/octet-stream",
            headers: vec![
                ("Content-Type", found.asset.media_type),
                ("Cache-Control", "no-store".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
            ],
            body: found.asset.data,
        },
        None => ApiResponse::problem(
            404,
            "asset_not_found",
            format!(
                "no open delivery `{delivery_id}` of external connector `{name}` references \
                 asset `{asset_id}`"
            ),
        ),
    }
}
