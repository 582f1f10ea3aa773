//! Observability routes: `/metrics` and `/v1/receipts`.

use super::{ApiRequest, ApiResponse, RequestCtx};

/// `GET /metrics`.
pub fn metrics(_ctx: &RequestCtx<'_>) -> ApiResponse {
    ApiResponse::problem(501, "not_implemented", "not built yet")
}

/// `GET /v1/receipts`.
pub fn list_receipts(_ctx: &RequestCtx<'_>, _req: &ApiRequest) -> ApiResponse {
    ApiResponse::problem(501, "not_implemented", "not built yet")
}
