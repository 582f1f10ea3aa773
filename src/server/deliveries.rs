//! Delivery and dead-letter routes (SPEC §5.1, §11.6).

use super::{ApiRequest, ApiResponse, RequestCtx, Route};

/// Handles a delivery route (after admin auth).
pub fn handle(_ctx: &RequestCtx<'_>, _route: &Route, _req: &ApiRequest) -> ApiResponse {
    ApiResponse::problem(501, "not_implemented", "not built yet")
}
