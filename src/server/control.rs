//! Control-plane routes for sessions and runs (SPEC §5.1, §11.1).

use super::{ApiRequest, ApiResponse, RequestCtx, Route};

/// Handles a session or run route.
pub fn handle(_ctx: &RequestCtx<'_>, _route: &Route, _req: &ApiRequest) -> ApiResponse {
    ApiResponse::problem(501, "not_implemented", "not built yet")
}
