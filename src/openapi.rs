//! The OpenAPI document. Paths come from the route table itself (each
//! handler's `#[utoipa::path]`), so the document cannot drift from the code.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::actions::{BlockEntityPayload, SetModePayload, UnblockEntityPayload};
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "Valhalla security API", description = "Policy, blocklist, action workflow and honeypot bridge."),
    components(schemas(Problem, FieldError, BlockEntityPayload, UnblockEntityPayload, SetModePayload)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "policy"), (name = "blocklist"), (name = "actions"), (name = "honeypots"),
        (name = "tokens"), (name = "audit"), (name = "dashboard")
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "honeypot_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-HONEYPOT-KEY"))),
        );
    }
}
